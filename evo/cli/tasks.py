"""`evo tasks` lists the problems; `evo eval TASK FILE` evaluates one candidate file."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from evo.cli import app, console

_STATUS_STYLE = {"correct": "bold green", "incorrect": "bold red", "rejected": "bold magenta",
                 "compile_error": "bold yellow", "runtime_error": "bold red", "timeout": "bold red"}


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


@app.command("tasks")
def tasks_command(as_json: bool = typer.Option(False, "--json", help="One JSON array instead of a table.")):
    """List the kernel tasks."""
    from baselines import all_tasks

    rows = [{"name": t.name, "signature": t.signature, "description": t.description,
             "dtypes": [str(d).removeprefix("torch.") for d in t.dtypes], "shapes": list(t.shapes),
             "check_shapes": list(t.check_shapes), "small_shapes": list(t.small_shapes), "seed": t.seed,
             "forbidden": list(t.forbidden)} for t in all_tasks()]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"{len(rows)} tasks")
    for column in ("task", "signature", "dtypes", "benchmark shapes", "seed"):
        table.add_column(column, overflow="fold")
    for r in rows:
        shapes = "; ".join(",".join(f"{k}={v}" for k, v in s.items()) for s in r["shapes"])
        table.add_row(r["name"], r["signature"], ", ".join(r["dtypes"]), shapes, r["seed"])
    console.print(table)


def infer_language(source: str) -> str:
    """CUDA when the module holds CUDA_SOURCE or uses CuPy, else Triton."""
    return "cuda" if re.search(r"^\s*CUDA_SOURCE\b|\bcupy\b", source, re.MULTILINE) else "triton"


@app.command("eval")
def eval_command(
    task: str = typer.Argument(..., help="Task name (see `evo tasks`)."),
    file: Path = typer.Argument(..., help="Candidate module: defines entry(*inputs)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (the EvalResult)."),
    language: Optional[str] = typer.Option(None, help="triton or cuda (default: inferred from the file)."),
    gpu: Optional[int] = typer.Option(None, help="GPU index (default: GPU 0 if there is one, else the CPU interpreter)."),
    cpu: bool = typer.Option(False, "--cpu", help="Use the CPU interpreter even if a GPU is present."),
    no_time: bool = typer.Option(False, "--no-time", help="Verify only, skip timing."),
):
    """Compile, check, verify and time one candidate file in the sandboxed evaluation process."""
    from baselines import UnknownTaskError, get_task
    from workers.devices import gpu_count
    from workers.sandbox import LANGUAGES, evaluate_once

    try:
        get_task(task)
    except UnknownTaskError as e:
        raise _fail(str(e)) from None
    if not file.is_file():
        raise _fail(f"no such file: {file}")
    source = file.read_text()
    language = language or infer_language(source)
    if language not in LANGUAGES:
        raise _fail(f"unknown language {language!r}; expected one of {', '.join(LANGUAGES)}")
    device = None if cpu else (gpu if gpu is not None else (0 if gpu_count() > 0 else None))
    result = evaluate_once(task, source, language, gpu=device, time_it=not no_time)
    if as_json:
        typer.echo(result.model_dump_json())
    else:
        _print_result(task, file, language, result)


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def _print_result(task: str, file: Path, language: str, result) -> None:
    style = _STATUS_STYLE.get(result.status, "bold")
    verdict = Table(show_header=False, title=f"{task} <- {file.name} ({language})")
    verdict.add_column(style="bold")
    verdict.add_column(overflow="fold")
    verdict.add_row("status", f"[{style}]{result.status}[/]" + (" (compile-only)" if result.compile_only else ""))
    verdict.add_row("device", result.device)
    if result.error:
        verdict.add_row("error", result.error)
    if result.runtime_ms is not None:
        verdict.add_row("runtime (geomean)", f"{result.runtime_ms:.4f} ms")
        verdict.add_row("speedup vs eager / compile / seed",
                        f"{_fmt(result.speedup_eager, '.2f')} / {_fmt(result.speedup_compile, '.2f')} / {_fmt(result.speedup_seed, '.2f')}")
    if result.sol_fraction is not None:
        verdict.add_row("speed of light", f"{100 * result.sol_fraction:.1f}%")
    verdict.add_row("phases (s)", ", ".join(f"{k} {v:.2f}" for k, v in result.phases.items()))
    console.print(verdict)
    if result.timings:
        unit = "ms (cpu-interpreter, not GPU speed)" if result.device == "cpu-interpreter" else "ms"
        table = Table(title=f"timings, {unit}")
        for column in ("shape", "dtype", "median", "spread", "n", "eager", "compile", "seed", "x eager", "x compile", "x seed", "SOL %"):
            table.add_column(column, justify="right")
        for t in result.timings:
            table.add_row(",".join(f"{k}={v}" for k, v in t.shape.items()), t.dtype, _fmt(t.median_ms),
                          f"{100 * t.spread:.1f}%", str(t.n), _fmt(t.eager_ms), _fmt(t.compile_ms), _fmt(t.seed_ms),
                          _fmt(t.speedup_eager, ".2f"), _fmt(t.speedup_compile, ".2f"), _fmt(t.speedup_seed, ".2f"),
                          _fmt(None if t.sol_fraction is None else 100 * t.sol_fraction, ".1f"))
        console.print(table)
