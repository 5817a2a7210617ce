"""`evo llm ...`: serve a local model with vLLM, check the configured endpoints, look at the
recorded calls and their cost, and work the batch backend's request/reply files."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from evo.cli import app, console

llm_app = typer.Typer(no_args_is_help=True, help="The LLM layer: vLLM serving, endpoints, calls, batch files.")
batch_app = typer.Typer(no_args_is_help=True, help="The batch backend: requests.jsonl out, replies*.jsonl in.")
llm_app.add_typer(batch_app, name="batch")
app.add_typer(llm_app, name="llm")


def user_errors(fn):
    """A bad setting or a failed start prints one line and exits 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from db.session import ConfigError
        from evo.llm.serve import ServeError
        try:
            return fn(*args, **kwargs)
        except (ConfigError, ServeError, ValueError) as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2)
    return wrapper


def _client():
    from db.session import get_sessionmaker
    from evo.llm import LLMClient, load_settings
    return LLMClient(load_settings(), get_sessionmaker())


@llm_app.command()
@user_errors
def serve(model: str = typer.Argument(..., help="Hugging Face model id or local path"),
          host: str = "127.0.0.1", port: int = 8000,
          tensor_parallel: int = typer.Option(1, "--tensor-parallel", "-tp", help="GPUs to shard the model over"),
          max_model_len: Optional[int] = typer.Option(None, help="context length (default: the model's)"),
          timeout: float = typer.Option(1800.0, help="seconds to wait for the server to load the model"),
          extra: Optional[list[str]] = typer.Argument(None, help="more `vllm serve` flags, after --")):
    """Start `vllm serve MODEL` with evo's flags, wait until it serves, keep it running (Ctrl-C stops it)."""
    from db.session import evo_home
    from evo.llm import serve as vllm

    log = evo_home() / "logs" / "vllm.log"
    console.print(f"starting vLLM for {model} on {host}:{port} (log: {log}) ...")
    process, base_url = vllm.start(model, host=host, port=port, tensor_parallel=tensor_parallel,
                                   max_model_len=max_model_len, extra=tuple(extra or ()), log=log, timeout_s=timeout)
    console.print(f"ready. Point evo at it:\n  export EVO_LLM_BASE_URL={base_url}\n  export EVO_LLM_MODEL={model}")
    try:
        process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        vllm.stop(process)
    if process.returncode not in (0, -2, -15):
        raise vllm.ServeError(f"vllm exited with status {process.returncode}; see {log}")


@llm_app.command()
@user_errors
def check():
    """Send one short request to each configured endpoint and show model, latency and reply."""
    import time

    import openai

    client = _client()
    table = Table("endpoint", "model", "latency", "reply")
    failed = False
    for endpoint in client.settings.endpoints:
        body = {"model": endpoint.model, "max_tokens": 16, "temperature": 0.0,
                "messages": [{"role": "user", "content": "Reply with the single word: ready"}]}
        start = time.perf_counter()
        try:
            response = client.raw_completion(endpoint, body)
            reply = ((response.get("choices") or [{}])[0].get("message") or {}).get("content") or ""
            table.add_row(endpoint.base_url, endpoint.model, f"{time.perf_counter() - start:.2f} s", reply.strip()[:40])
        except openai.OpenAIError as e:
            failed = True
            table.add_row(endpoint.base_url, endpoint.model, "-", f"[red]{type(e).__name__}: {str(e)[:60]}[/red]")
    console.print(table)
    if failed:
        raise typer.Exit(1)


@llm_app.command()
@user_errors
def calls(job: Optional[int] = typer.Option(None, help="only this job's calls"), limit: int = 20):
    """The latest recorded LLM calls, with tokens, latency and cost, and the totals."""
    from sqlalchemy import Integer, cast, func, select

    from db.models import LLMCall
    from db.session import session_scope

    with session_scope() as s:
        where = [LLMCall.job_id == job] if job is not None else []
        rows = s.scalars(select(LLMCall).where(*where).order_by(LLMCall.id.desc()).limit(limit)).all()
        n, cost, tokens_in, tokens_out, cached = s.execute(
            select(func.count(), func.sum(LLMCall.cost_usd), func.sum(LLMCall.prompt_tokens),
                   func.sum(LLMCall.completion_tokens), func.sum(cast(LLMCall.cached, Integer)))
            .where(*where)).one()
    table = Table("id", "job", "model", "tokens in/out", "latency", "cost $", "cached", "error")
    for r in reversed(rows):
        table.add_row(str(r.id), str(r.job_id or "-"), r.model, f"{r.prompt_tokens or 0}/{r.completion_tokens or 0}",
                      "-" if r.latency_s is None else f"{r.latency_s:.2f} s",
                      "-" if r.cost_usd is None else f"{r.cost_usd:.4f}", "yes" if r.cached else "",
                      (r.error or "")[:50])
    console.print(table)
    console.print(f"{n} calls, {cached or 0} from the cache, {tokens_in or 0} prompt + {tokens_out or 0} completion "
                  f"tokens, ${cost or 0:.4f} (calls with an unknown price count 0)")


@batch_app.command("status")
@user_errors
def batch_status(directory: Path = typer.Argument(..., help="the batch directory (EVO_LLM_BATCH_DIR)")):
    """How many requests wait for replies."""
    from evo.llm.batch import pending, read_jsonl, read_replies

    total = len(read_jsonl(directory / "requests.jsonl"))
    waiting = len(pending(directory))
    console.print(f"{total} requests, {total - waiting} answered ({len(read_replies(directory))} replies on file), "
                  f"{waiting} waiting")


@batch_app.command("run")
@user_errors
def batch_run(directory: Path = typer.Argument(..., help="the batch directory")):
    """Answer the waiting requests now, one by one, through the configured endpoint, and write
    them as a Batch API output file (for a machine that can reach an endpoint the workers cannot)."""
    from evo.llm.batch import run_pending

    out = run_pending(directory, _sender())
    console.print("nothing waits" if out is None else f"wrote {out}")
    _resume_waiting_jobs(directory)


def _sender():
    """A client that sends (the configured endpoint), whatever EVO_LLM_BATCH_DIR says."""
    from db.session import get_sessionmaker
    from evo.llm import LLMClient, load_settings

    return LLMClient(load_settings().model_copy(update={"batch_dir": None}), get_sessionmaker())


@batch_app.command("submit")
@user_errors
def batch_submit(directory: Path = typer.Argument(..., help="the batch directory")):
    """Upload the waiting requests to the OpenAI Batch API (half price, answered within 24 h)."""
    from evo.llm.batch import submit

    batch_id = submit(directory, _sender())
    console.print("nothing waits" if batch_id is None else f"submitted batch {batch_id}; "
                  f"`evo llm batch fetch {directory}` collects it when it is done")


@batch_app.command("fetch")
@user_errors
def batch_fetch(directory: Path = typer.Argument(..., help="the batch directory")):
    """Download the output of finished batches into the directory as replies-<batch>.jsonl."""
    from evo.llm.batch import fetch

    report = fetch(directory, _sender())
    for batch_id, status in report:
        console.print(f"{batch_id}: {status}")
    if not report:
        console.print("no batch waits to be fetched")
    _resume_waiting_jobs(directory)


def _resume_waiting_jobs(directory: Path) -> None:
    """Continue the jobs waiting for these replies: through the cluster when EVO_BROKER_URL is
    set; without one, `evo resume JOB` starts the embedded workers to run each."""
    import os

    from db.migrate import upgrade
    from db.session import session_scope
    from evo.jobs import resume_waiting_jobs
    from evo.orchestrate import jobs_waiting_on

    upgrade()
    with session_scope() as s:
        if os.environ.get("EVO_BROKER_URL"):
            for job in resume_waiting_jobs(s, directory):
                console.print(f"resumed job {job.id}")
        else:
            for job in jobs_waiting_on(s, directory):
                console.print(f"job {job.id} waits for these replies: `evo resume {job.id}` continues it")
