"""Job validation, cancel/resume rules, the leaderboard queries, and the CLI's bad-input exits."""
import re
from datetime import datetime, timezone

import pytest
from sqlalchemy import func, select

from db.models import Candidate, Evaluation, Job, JobCandidate
from db.session import session_scope
from evo.jobs import JobError, cancel_job, resume_job, submit_job
from evo.leaderboard import best_kernels, generation_curve, job_progress, list_jobs
from workers.protocol import HARNESS_VERSION, content_hash

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)


def job_count() -> int:
    with session_scope() as s:
        return s.scalar(select(func.count(Job.id)))


@pytest.mark.parametrize("kwargs, message", [
    (dict(task="nope"), "unknown task 'nope'"),
    (dict(strategy="nope"), "unknown strategy 'nope'"),
    (dict(budget=0), "budget must be a positive"),
    (dict(budget=-3), "budget must be a positive"),
    (dict(budget="7"), "budget must be a positive"),
    (dict(language="fortran"), "language must be one of"),
    (dict(language="cuda", task="softmax"), "no cuda seed kernel"),
    (dict(config={"seed": "x"}), "config seed must be an integer"),
    (dict(config={"f": object()}), "not JSON-serializable"),
])
def test_submit_rejects_bad_input_and_writes_nothing(sqlite_db, kwargs, message):
    args = dict(task="softmax", strategy="tune", budget=4, language="triton", config=None) | kwargs
    with session_scope() as s:
        with pytest.raises(JobError, match=message):
            submit_job(s, **args, enqueue=False)
    assert job_count() == 0


@pytest.fixture(params=["syntax", "missing package"])
def broken_seed(request, tmp_path, monkeypatch):
    """softmax's seed replaced by a module that cannot load; returns what the error must say."""
    import evo.orchestrate

    if request.param == "syntax":
        (tmp_path / "evo_broken_seed.py").write_text("def entry(x):\n    return x +\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        module, detail = "evo_broken_seed", "SyntaxError: invalid syntax (evo_broken_seed, line 2)"
    else:
        module, detail = "evo_no_such_package.seed", "ModuleNotFoundError: No module named 'evo_no_such_package'"
    monkeypatch.setattr(evo.orchestrate, "seed_module", lambda task, language: module)
    return f"seed kernel {module} failed to import: {detail}"


def test_a_broken_seed_is_a_clear_error_everywhere(sqlite_db, broken_seed, monkeypatch):
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from db.session import get_sessionmaker
    from evo.cli import app
    from evo.jobs import SeedError
    from evo.web import create_app

    with session_scope() as s:
        with pytest.raises(SeedError, match=re.escape(broken_seed)):
            submit_job(s, "softmax", "tune", 4, enqueue=False)
    # The API: a fault of the server, said in one JSON line, not a traceback.
    api = TestClient(create_app(get_sessionmaker(sqlite_db), api_token="t", broker_url=""))
    r = api.post("/api/jobs", json={"task": "softmax", "strategy": "tune", "budget": 3},
                 headers={"Authorization": "Bearer t"})
    assert r.status_code == 500 and r.json() == {"error": broken_seed}
    # The CLI: exit 2 with one line.
    monkeypatch.setenv("EVO_BROKER_URL", "redis://127.0.0.1:6379/5")
    result = CliRunner().invoke(app, ["submit", "softmax"])
    assert result.exit_code == 2 and result.output.strip().splitlines() == [f"error: {broken_seed}"], result.output
    assert job_count() == 0


def test_submit_cancel_resume_states(sqlite_db):
    with session_scope() as s:
        job = submit_job(s, "softmax", "tune", 4, config={"seed": 3}, enqueue=False)
        assert (job.state, job.llm_model, job.config) == ("queued", None, {"seed": 3})
        job_id = job.id
    with session_scope() as s:
        assert cancel_job(s, job_id).state == "cancelled"
        assert cancel_job(s, job_id).state == "cancelled"  # idempotent
        with pytest.raises(JobError, match="no job 999"):
            cancel_job(s, 999)
        s.get(Job, job_id).state = "done"
    with session_scope() as s:
        with pytest.raises(JobError, match="already ended"):
            cancel_job(s, job_id)
        with pytest.raises(JobError, match="is done"):
            resume_job(s, job_id)


def add_candidate(s, task, n, job, generation, evals, operator="tune"):
    """A candidate (unique source n) proposed by `job`, with {device: (status, runtime_ms, speedup)}."""
    source = f"def entry(x):\n    return x  # {n}\n"
    c = Candidate(task=task, language="triton", source=source, content_hash=content_hash(source, task),
                  harness_version=HARNESS_VERSION)
    s.add(c)
    s.flush()
    s.add(JobCandidate(job_id=job.id, candidate_id=c.id, generation=generation, operator=operator))
    for device, (status, runtime, speedup) in evals.items():
        s.add(Evaluation(candidate_id=c.id, device=device, status=status, attempts=1, runtime_ms=runtime,
                         speedup_eager=speedup, speedup_seed=speedup and speedup / 2, finished_at=T0))
    return c


def test_leaderboard_progress_and_curve(sqlite_db):
    with session_scope() as s:
        a = Job(task="softmax", strategy="tune", budget=6, state="done", generation=2, calls_used=4,
                config={"device": "H200"})
        b = Job(task="rmsnorm", strategy="evoengineer-full", llm_model="m1", budget=5, state="running",
                generation=0, calls_used=0, config={})
        s.add_all([a, b])
        s.flush()
        add_candidate(s, "softmax", 0, a, 0, {"H200": ("correct", 2.0, 1.0), "cpu-interpreter": ("correct", 9.0, 0.1)},
                      operator="seed")
        fast = add_candidate(s, "softmax", 1, a, 1, {"H200": ("correct", 1.0, 2.0)})
        add_candidate(s, "softmax", 2, a, 1, {"H200": ("incorrect", None, None)})
        add_candidate(s, "softmax", 3, a, 2, {"H200": ("correct", 1.5, 1.3)})
        add_candidate(s, "softmax", 4, a, 2, {})  # not evaluated yet
        mid = add_candidate(s, "rmsnorm", 5, b, 0, {"H200": ("correct", 0.5, 1.1)}, operator="seed")
        a_id, b_id, fast_id, mid_id = a.id, b.id, fast.id, mid.id

    with session_scope() as s:
        rows = best_kernels(s)
        assert [(r.task, r.device, r.candidate_id) for r in rows] == [
            ("rmsnorm", "H200", mid_id), ("softmax", "H200", fast_id), ("softmax", "cpu-interpreter", fast_id - 1)]
        top = best_kernels(s, task="softmax", device="H200", per_task=2)
        assert [(r.rank, r.runtime_ms, r.job_id, r.strategy) for r in top] == [(1, 1.0, a_id, "tune"),
                                                                               (2, 1.5, a_id, "tune")]
        assert best_kernels(s, task="rmsnorm")[0].llm_model == "m1"

        p = job_progress(s, a_id)
        assert (p.proposed, p.evaluated, p.valid, p.best_runtime_ms, p.best_speedup_eager) == (5, 4, 3, 1.0, 2.0)
        assert p.valid_rate == 0.75
        assert job_progress(s, 12345) is None
        # Before the job's device is known, any finished verdict counts.
        assert job_progress(s, b_id).evaluated == 1

        curve = generation_curve(s, a_id)
        assert [(c.generation, c.proposed, c.evaluated, c.valid, c.gen_best_runtime_ms, c.best_runtime_ms)
                for c in curve] == [(0, 1, 1, 1, 2.0, 2.0), (1, 2, 2, 1, 1.0, 1.0), (2, 2, 1, 1, 1.5, 1.0)]
        assert [c.best_speedup_eager for c in curve] == [1.0, 2.0, 2.0]

        assert [j.id for j in list_jobs(s)] == [b_id, a_id]
        assert [j.id for j in list_jobs(s, state="done")] == [a_id]


def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(sqlite_db, tmp_path, cli):
    env = {"EVO_DATABASE_URL": sqlite_db, "EVO_BROKER_URL": "redis://127.0.0.1:6379/5"}
    cases = [
        (("submit", "nope"), env, "unknown task 'nope'"),
        (("submit", "softmax", "--budget", "-1"), env, "budget must be a positive"),
        (("submit", "softmax"), {**env, "EVO_BROKER_URL": "http://example.com"}, "EVO_BROKER_URL must be redis"),
        (("submit", "softmax"), {**env, "EVO_BROKER_URL": "redis://host:port/0"}, "EVO_BROKER_URL is not a URL"),
        (("optimize", "softmax", "--budget", "0"), {"EVO_DATABASE_URL": sqlite_db}, "budget must be a positive"),
        (("status", "77"), env, "no job 77"),
        (("jobs",), {**env, "EVO_DATABASE_URL": "not a url"}, "EVO_DATABASE_URL is not a database URL"),
    ]
    for args, case_env, message in cases:
        result = cli(*args, env=case_env)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (args, result.stderr)
    assert job_count() == 0
    assert not (tmp_path / "logs").exists()  # optimize started nothing


def test_cli_tables_are_wide_in_pipes(sqlite_db):
    """Piped output (CI logs) without COLUMNS: rich's 80-column fallback cut every column to "…"."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"} | {"PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", "from evo.cli import app; app()", "tasks"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(map(len, lines)) > 80 and "…" not in result.stdout
    assert any("softmax" in line and "kernels.softmax" in line for line in lines)  # one row, not folded


def test_a_job_waiting_for_batch_replies_is_running_with_a_note(sqlite_db, tmp_path, monkeypatch):
    import typer
    from typer.testing import CliRunner

    from evo.cli import app
    from evo.cli.jobs import WAITING_EXIT, _follow_and_report
    from evo.jobs import is_waiting
    from evo.llm.batch import BatchPending
    from evo.orchestrate import jobs_waiting_on, wait_for_batch

    batch = tmp_path / "batch"
    batch.mkdir()
    with session_scope() as s:
        job = submit_job(s, "softmax", "evoengineer-full", 4, enqueue=False)
        job.state = "running"  # as the start task leaves it
        job_id = job.id
    wait_for_batch(job_id, 1, BatchPending(batch, 4))  # a stale advance (another generation) writes nothing
    with session_scope() as s:
        assert s.get(Job, job_id).error is None
    wait_for_batch(job_id, 0, BatchPending(batch, 4))
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert is_waiting(job.state, job.error) and job.error.startswith(f"waiting for 4 batch replies in {batch}; ")
        assert [j.id for j in jobs_waiting_on(s, batch)] == [job_id] and jobs_waiting_on(s, tmp_path) == []

    runner = CliRunner()
    status = runner.invoke(app, ["status", str(job_id)])
    assert status.exit_code == 0 and "state running" in status.output, status.output
    assert "note: waiting for 4 batch replies" in status.output
    with pytest.raises(typer.Exit) as ended:  # `evo optimize` / `evo resume` stop following, the job is kept
        _follow_and_report(job_id, "softmax")
    assert ended.value.exit_code == WAITING_EXIT
    # Without a broker, `evo llm batch run` names the waiting job and how to continue it.
    monkeypatch.delenv("EVO_BROKER_URL", raising=False)
    monkeypatch.setenv("EVO_LLM_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("EVO_LLM_MODEL", "fake-model")
    run = runner.invoke(app, ["llm", "batch", "run", str(batch)])
    assert run.exit_code == 0, run.output
    assert f"job {job_id} waits for these replies: `evo resume {job_id}`" in run.output
