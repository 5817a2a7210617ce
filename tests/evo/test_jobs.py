"""Job validation, cancel/resume rules, the leaderboard queries, and the CLI's bad-input exits."""
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
