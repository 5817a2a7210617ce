"""Job commands: optimize, submit, status, jobs, cancel, resume, leaderboard, worker, export.

Bad input (unknown task or job, bad budget, malformed EVO_* URL) prints one line and exits 2
before anything is written. Imports of torch, Celery and the DB happen inside the commands
so `evo --help` stays fast.
"""
from __future__ import annotations

import functools
import os
import signal
import time
from typing import Optional

import typer
from rich.table import Table

from evo.cli import app, console, err

WAITING_EXIT = 3  # optimize/resume: the job is kept, waiting for batch replies


def user_errors(fn):
    """JobError / ConfigError / ValueError -> `error: ...` on stderr and exit status 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from db.session import ConfigError
        from evo.jobs import JobError
        try:
            return fn(*args, **kwargs)
        except (JobError, ConfigError) as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2)
    return wrapper


def _sigterm_as_interrupt() -> None:
    def handler(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, handler)


def _check_settings(need_broker: bool) -> None:
    from db.session import database_url
    from workers.celery_app import broker_url
    database_url()
    if need_broker:
        broker_url()


def _prepare_db() -> None:
    from db.migrate import upgrade
    upgrade()


def _fmt(x: float | None, spec: str = ".2f", prefix: str = "") -> str:
    return "-" if x is None else f"{prefix}{x:{spec}}"


def _describe(p) -> str:
    rate = "-" if p.valid_rate is None else f"{p.valid_rate:.0%}"
    return (f"job {p.id} {p.task} gen {p.generation} | evaluated {p.evaluated}/{p.proposed} | valid {rate} | "
            f"best {_fmt(p.best_speedup_eager, '.3g', 'x')} vs eager, {_fmt(p.best_speedup_seed, '.3g', 'x')} vs seed")


def follow(job_id: int, services=None, poll_s: float = 0.5):
    """Show a progress bar until the job ends or waits for batch replies (polls the DB).
    Returns the last JobProgress."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from db.session import session_scope
    from evo.jobs import FINAL_STATES, is_waiting
    from evo.leaderboard import job_progress

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as bar:
        row = bar.add_task(f"job {job_id}", total=None)
        while True:
            with session_scope() as s:
                p = job_progress(s, job_id)
            seeds = 2 if p.language == "both" else 1
            bar.update(row, description=_describe(p), completed=p.evaluated,
                       total=max(p.budget + seeds, p.proposed))
            if p.state in FINAL_STATES or is_waiting(p.state, p.error):
                return p
            if services is not None and services.dead_workers():
                raise RuntimeError(f"a worker exited early (pids {services.dead_workers()}); "
                                   f"logs in {services.home / 'logs'}")
            time.sleep(poll_s)


def print_leaderboard(task: str | None = None, device: str | None = None, top: int = 1) -> None:
    from db.session import session_scope
    from evo.leaderboard import best_kernels

    with session_scope() as s:
        rows = best_kernels(s, task=task, device=device, per_task=top)
    table = Table(title="leaderboard" + (f": {task}" if task else ""))
    for col in ("task", "#", "vs eager", "vs compile", "vs seed", "% SOL", "runtime ms", "device", "strategy",
                "LLM", "job", "candidate", "lang", "date"):
        table.add_column(col, justify="right" if col in ("#", "vs eager", "vs compile", "vs seed", "% SOL",
                                                         "runtime ms", "job", "candidate") else "left")
    for r in rows:
        table.add_row(r.task, str(r.rank), _fmt(r.speedup_eager, ".3g", "x"), _fmt(r.speedup_compile, ".3g", "x"),
                      _fmt(r.speedup_seed, ".3g", "x"), _fmt(None if r.sol_fraction is None else 100 * r.sol_fraction, ".0f"),
                      _fmt(r.runtime_ms, ".4g"), r.device, r.strategy or "-", r.llm_model or "-",
                      str(r.job_id or "-"), str(r.candidate_id), r.language, r.date.strftime("%Y-%m-%d") if r.date else "-")
    if not rows:
        console.print("no correct kernels yet" + (f" for {task}" if task else ""))
    else:
        console.print(table)


def _job_options(task: str, strategy: str, budget: int, language: str, llm: Optional[str], seed: int,
                 samplers: Optional[int]) -> dict:
    config = {"seed": seed}
    if samplers is not None:
        config["samplers"] = samplers
    return dict(task=task, strategy=strategy, budget=budget, language=language, llm=llm, config=config)


STRATEGY = typer.Option("tune", "--strategy", "-s", help="search strategy (evo.strategies.STRATEGIES)")
BUDGET = typer.Option(45, "--budget", "-b", help="LLM calls (for tune: candidates)")
LANGUAGE = typer.Option("triton", "--language", "-l", help="triton | cuda | both")
LLM = typer.Option(None, "--llm", help="LLM model name (default EVO_LLM_MODEL)")
SEED = typer.Option(0, "--seed", help="seed of the strategy's random choices")
SAMPLERS = typer.Option(None, "--samplers", help="candidates per generation")


@app.command()
@user_errors
def optimize(task: str, strategy: str = STRATEGY, budget: int = BUDGET, language: str = LANGUAGE,
             llm: Optional[str] = LLM, seed: int = SEED, samplers: Optional[int] = SAMPLERS,
             gpus: Optional[str] = typer.Option(None, help="GPU indices for the embedded workers, e.g. 0,1")):
    """Run a job to the end with a progress bar, then print the task's leaderboard.

    With EVO_BROKER_URL unset it starts an embedded Redis and its own workers (and stops them
    at the end); with EVO_BROKER_URL set it submits to the cluster and follows. Exits 3 when
    the job waits for batch replies (EVO_LLM_BATCH_DIR): the job is kept for `evo resume`."""
    from db.session import evo_home, session_scope
    from evo.jobs import submit_job, validate

    options = _job_options(task, strategy, budget, language, llm, seed, samplers)
    embedded = not os.environ.get("EVO_BROKER_URL")
    _check_settings(need_broker=not embedded)
    validate(task, strategy, budget, language, options["config"])
    _prepare_db()
    _sigterm_as_interrupt()
    if not embedded:
        with session_scope() as s:
            job_id = submit_job(s, **options).id
        console.print(f"submitted job {job_id}")
        _follow_and_report(job_id, task)
        return
    from evo.embedded import Services
    with Services(evo_home(), gpus=_parse_gpus(gpus)) as services:
        with session_scope() as s:
            job_id = submit_job(s, **options).id
        console.print(f"job {job_id}: embedded Redis and workers started (logs in {services.home / 'logs'})")
        _follow_and_report(job_id, task, services)


def _follow_and_report(job_id: int, task: str, services=None) -> None:
    try:
        p = follow(job_id, services)
    except KeyboardInterrupt:
        err.print(f"interrupted; job {job_id} is kept: `evo resume {job_id}` continues it")
        raise typer.Exit(130)
    except RuntimeError as e:  # an embedded worker died
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1)
    if p.state == "running":  # waits for batch replies; the note says how to continue
        console.print(f"job {job_id} is {p.error}", markup=False)
        raise typer.Exit(WAITING_EXIT)
    console.print(f"job {job_id} {p.state}" + (f": {p.error}" if p.error else ""), markup=False)
    print_leaderboard(task)
    if p.state != "done":
        raise typer.Exit(1)


def _parse_gpus(gpus: Optional[str]) -> list[int] | None:
    if gpus is None:
        return None
    try:
        return [int(g) for g in gpus.split(",") if g.strip()]
    except ValueError:
        from evo.jobs import JobError
        raise JobError(f"--gpus must be a comma list of GPU indices, got {gpus!r}") from None


@app.command()
@user_errors
def submit(task: str, strategy: str = STRATEGY, budget: int = BUDGET, language: str = LANGUAGE,
           llm: Optional[str] = LLM, seed: int = SEED, samplers: Optional[int] = SAMPLERS):
    """Queue a job on the configured cluster (EVO_BROKER_URL) and print its id."""
    from db.session import session_scope
    from evo.jobs import submit_job, validate

    options = _job_options(task, strategy, budget, language, llm, seed, samplers)
    _check_settings(need_broker=True)
    validate(task, strategy, budget, language, options["config"])
    _prepare_db()
    with session_scope() as s:
        print(submit_job(s, **options).id)


@app.command()
@user_errors
def status(job: Optional[int] = typer.Argument(None, help="job id (default: the latest)"),
           as_json: bool = typer.Option(False, "--json")):
    """A job's state, progress and best-speedup curve per generation."""
    import json

    from db.session import session_scope
    from evo.jobs import JobError
    from evo.leaderboard import generation_curve, job_progress, list_jobs

    _check_settings(need_broker=False)
    _prepare_db()
    with session_scope() as s:
        if job is None:
            latest = list_jobs(s, limit=1)
            if not latest:
                raise JobError("no jobs yet")
            job = latest[0].id
        p = job_progress(s, job)
        if p is None:
            raise JobError(f"no job {job}")
        curve = generation_curve(s, job)
    if as_json:
        print(json.dumps({**p.as_dict(), "curve": [c.as_dict() for c in curve]}, default=str))
        return
    console.print(f"{_describe(p)} | state {p.state} | budget {p.calls_used}/{p.budget} | device {p.device or '-'}")
    if p.error:
        console.print(f"{'note' if p.state == 'running' else 'error'}: {p.error}", markup=False)
    table = Table("gen", "proposed", "evaluated", "valid", "best ms (gen)", "best ms", "best vs eager", "best vs seed")
    for c in curve:
        table.add_row(str(c.generation), str(c.proposed), str(c.evaluated), str(c.valid),
                      _fmt(c.gen_best_runtime_ms, ".4g"), _fmt(c.best_runtime_ms, ".4g"),
                      _fmt(c.best_speedup_eager, ".3g", "x"), _fmt(c.best_speedup_seed, ".3g", "x"))
    console.print(table)


@app.command()
@user_errors
def jobs(state: Optional[str] = typer.Option(None, help="queued|running|done|failed|cancelled"),
         task: Optional[str] = None, limit: int = 20):
    """Recent jobs."""
    from db.session import session_scope
    from evo.leaderboard import list_jobs

    _check_settings(need_broker=False)
    _prepare_db()
    with session_scope() as s:
        rows = list_jobs(s, state=state, task=task, limit=limit)
    table = Table("job", "task", "strategy", "state", "gen", "budget", "evaluated", "valid", "best vs eager", "created")
    for p in rows:
        table.add_row(str(p.id), p.task, p.strategy, p.state, str(p.generation), f"{p.calls_used}/{p.budget}",
                      str(p.evaluated), "-" if p.valid_rate is None else f"{p.valid_rate:.0%}",
                      _fmt(p.best_speedup_eager, ".3g", "x"), p.created_at.strftime("%Y-%m-%d %H:%M"))
    console.print(table)


@app.command()
@user_errors
def cancel(job: int):
    """Cancel a job: evaluations not yet started are skipped."""
    from db.session import session_scope
    from evo.jobs import cancel_job

    _check_settings(need_broker=False)
    _prepare_db()
    with session_scope() as s:
        console.print(f"job {cancel_job(s, job).id} cancelled")


@app.command()
@user_errors
def resume(job: int, follow_job: bool = typer.Option(True, "--follow/--no-follow"),
           gpus: Optional[str] = typer.Option(None, help="GPU indices for the embedded workers")):
    """Continue a job (after its control process died, or after cancel/failure); finished
    evaluations are kept. Without EVO_BROKER_URL it starts the embedded services to run it."""
    from db.session import evo_home, session_scope
    from evo.jobs import get_job, resume_job

    embedded = not os.environ.get("EVO_BROKER_URL")
    _check_settings(need_broker=not embedded)
    _prepare_db()
    with session_scope() as s:
        task = get_job(s, job).task  # unknown job: exit 2 before starting anything
    _sigterm_as_interrupt()
    if not embedded:
        with session_scope() as s:
            resume_job(s, job)
        console.print(f"job {job} resumed")
        if follow_job:
            _follow_and_report(job, task)
        return
    from evo.embedded import Services
    with Services(evo_home(), gpus=_parse_gpus(gpus)) as services:
        with session_scope() as s:
            resume_job(s, job)
        _follow_and_report(job, task, services)


@app.command()
@user_errors
def leaderboard(task: Optional[str] = typer.Argument(None), device: Optional[str] = None,
                top: int = typer.Option(1, help="kernels per task and device"),
                as_json: bool = typer.Option(False, "--json")):
    """Best kernels per task: speedup vs eager, torch.compile and the seed, % of speed-of-light."""
    import json

    from db.session import session_scope
    from evo.leaderboard import best_kernels

    _check_settings(need_broker=False)
    if task is not None:
        from baselines import UnknownTaskError, get_task
        from evo.jobs import JobError
        try:
            get_task(task)
        except UnknownTaskError as e:
            raise JobError(str(e)) from None
    _prepare_db()
    if as_json:
        with session_scope() as s:
            print(json.dumps([r.as_dict() for r in best_kernels(s, task, device, top)], default=str))
        return
    print_leaderboard(task, device, top)


@app.command()
@user_errors
def worker(queues: str = typer.Option("gpu", help="comma list of control, cpu, gpu"),
           gpus: Optional[str] = typer.Option(None, help="GPU indices (default: all visible)")):
    """Run workers against EVO_BROKER_URL: one per GPU for `gpu` (or one CPU-interpreter worker
    when there is no GPU), one for the other queues. Stops them all on Ctrl-C / SIGTERM."""
    from db.session import evo_home
    from evo.embedded import start_worker, stop_workers, worker_specs
    from evo.jobs import JobError

    _check_settings(need_broker=True)
    _prepare_db()
    try:
        specs = worker_specs(queues, _parse_gpus(gpus))
    except ValueError as e:
        raise JobError(str(e)) from None
    logs = evo_home() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    _sigterm_as_interrupt()
    procs = []
    try:
        for spec in specs:
            procs.append(start_worker(spec, logs))
            console.print(f"worker {spec.name} (queues {spec.queues}) pid {procs[-1].pid}, log {logs}/worker-{spec.name}.log")
        while all(p.poll() is None for p in procs):
            time.sleep(1)
        failed = [p.pid for p in procs if p.poll() not in (None, 0)]
        err.print(f"worker(s) {failed} exited; stopping the others")
        raise typer.Exit(1)
    except KeyboardInterrupt:
        pass
    finally:
        stop_workers(procs)


@app.command()
@user_errors
def export(target: str = typer.Argument(..., help="JOB id (its best candidate), or cN / candidate:N"),
           kernels_dir: Optional[str] = typer.Option(None, help="library directory (default: the repo's kernels/)"),
           force: bool = typer.Option(False, help="replace even a kernel that measured faster on this GPU")):
    """Re-verify a winner on this machine's device and write it into the kernel library."""
    from pathlib import Path

    from db.session import session_scope
    from evo.export import ExportError, export_kernel, resolve_target

    _check_settings(need_broker=False)
    _prepare_db()
    try:
        with session_scope() as s:
            candidate_id, job_id = resolve_target(s, target)
        result = export_kernel(candidate_id, job_id=job_id, kernels_dir=Path(kernels_dir) if kernels_dir else None,
                               force=force)
    except ExportError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1 if e.refused else 2)
    console.print(f"wrote {result.path} (candidate {candidate_id}, {result.summary})")
