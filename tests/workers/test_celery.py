"""The evaluation task: idempotent claims in the DB, and a real worker process on the real Redis."""
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db.models import Candidate, Evaluation, utcnow
from db.session import ConfigError, session_scope
from workers import tasks
from workers.celery_app import settings
from workers.protocol import HARNESS_VERSION, EvalResult, content_hash

REDIS_DB = 5
SEED = (Path(__file__).resolve().parents[2] / "kernels" / "softmax.py").read_text()


PG_SCHEMA = "evo_service_claims"


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db(request, monkeypatch, postgres_schema):
    """The claim logic on both databases (PostgreSQL: row locks; SQLite: compare-and-set)."""
    if request.param == "sqlite":
        yield request.getfixturevalue("sqlite_db")
        return
    from db.migrate import upgrade
    from db.session import get_engine
    with postgres_schema(PG_SCHEMA) as url:
        upgrade(url)
        monkeypatch.setenv("EVO_DATABASE_URL", url)
        yield url
        get_engine(url).dispose()


def add_candidate(source: str, task: str = "softmax") -> int:
    with session_scope() as s:
        c = Candidate(task=task, language="triton", source=source, content_hash=content_hash(source, task),
                      harness_version=HARNESS_VERSION)
        s.add(c)
        s.flush()
        return c.id


def evaluation_rows(candidate_id: int) -> list[Evaluation]:
    with session_scope() as s:
        return list(s.scalars(select(Evaluation).where(Evaluation.candidate_id == candidate_id)))


def test_claim_is_idempotent(any_db):
    cid = add_candidate(SEED)
    outcome, row = tasks.claim(cid, "dev", "w1")
    assert outcome == "run" and row.id
    # A duplicate delivery while the first attempt is alive leaves it alone.
    assert tasks.claim(cid, "dev", "w2")[0] == "in_flight"
    assert tasks.record(row.id, EvalResult(status="correct", device="dev", runtime_ms=1.5))
    # A redelivery after the result changes nothing, and a second record is refused.
    assert tasks.claim(cid, "dev", "w3")[0] == "finished"
    assert not tasks.record(row.id, EvalResult(status="incorrect", device="dev"))
    [only] = evaluation_rows(cid)
    assert (only.status, only.attempts, only.runtime_ms, only.worker) == ("correct", 1, 1.5, "w1")
    # Another device is another row.
    assert tasks.claim(cid, "other", "w4")[0] == "run"
    assert len(evaluation_rows(cid)) == 2


def test_dead_attempts_are_retried_then_given_up(any_db):
    cid = add_candidate(SEED)
    for attempt in range(1, tasks.MAX_ATTEMPTS + 1):
        outcome, row = tasks.claim(cid, "dev", f"w{attempt}")
        assert outcome == "run"
        with session_scope() as s:  # the worker died: its claim grows older than the lease
            s.get(Evaluation, row.id).started_at = utcnow() - tasks._lease() - timedelta(seconds=1)
    outcome, row = tasks.claim(cid, "dev", "last")
    assert outcome == "finished" and row.status == "runtime_error"
    assert f"lost {tasks.MAX_ATTEMPTS} times" in row.error


def test_settings_validate_the_environment(monkeypatch):
    monkeypatch.setenv("EVO_TASK_TIME_LIMIT", "100")
    monkeypatch.setenv("EVO_VISIBILITY_TIMEOUT", "50")
    with pytest.raises(ConfigError, match="must exceed"):
        settings("redis://localhost:6379/0")
    monkeypatch.setenv("EVO_VISIBILITY_TIMEOUT", "150")
    conf = settings("redis+socket:///tmp/r.sock")
    assert conf["broker_transport_options"]["visibility_timeout"] == 150
    assert (conf["task_acks_late"], conf["worker_prefetch_multiplier"], conf["task_time_limit"]) == (True, 1, 100)
    monkeypatch.setenv("EVO_TASK_TIME_LIMIT", "soon")
    with pytest.raises(ConfigError, match="whole number"):
        settings("redis://localhost:6379/0")


def _parent_pid(pid: int) -> int | None:
    try:  # /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def evaluation_processes(worker_pid: int) -> list[int]:
    """The evaluation processes (workers.harness.child) spawned by the worker's pool processes."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        parent = _parent_pid(int(entry.name))
        if b"workers.harness.child" in argv and parent is not None and _parent_pid(parent) == worker_pid:
            found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_worker_process_evaluates_once_and_never_raises(cluster, poll):
    good = add_candidate(SEED)
    broken = add_candidate("def entry(x):\n    return x +\n")
    worker = cluster.start_worker("gpu-test", "gpu")
    # Warm start: the pool process spawns its evaluation process before any task arrives.
    [warm] = poll(lambda: evaluation_processes(worker.pid), 60, f"an evaluation process\n{cluster.log_tail()}")
    sent = [cluster.app.send_task("workers.tasks.evaluate", args=(cid, None), queue="gpu")
            for cid in (good, good, broken)]
    results = [r.get(timeout=90) for r in sent]
    assert [r["status"] for r in results] == ["correct", "correct", "compile_error"], cluster.log_tail()
    assert sorted(r["reason"] for r in results[:2]) == ["evaluated", "finished"]
    [row] = evaluation_rows(good)
    assert (row.status, row.attempts, row.device) == ("correct", 1, "cpu-interpreter")
    assert row.runtime_ms > 0 and row.phases and row.environment["harness_version"] == HARNESS_VERSION
    [bad] = evaluation_rows(broken)
    assert bad.status == "compile_error" and "syntax error at line 2" in bad.error
    with session_scope() as s:
        assert s.scalar(select(func.count(Evaluation.id))) == 2
    assert evaluation_processes(worker.pid) == [warm]  # the warm process gave the verdicts


def test_worker_specs_one_per_gpu_or_one_cpu_worker(monkeypatch):
    from evo.embedded import worker_specs
    import workers.devices as devices

    monkeypatch.setattr(devices, "_nvidia_smi_gpus", lambda: ())
    [cpu] = worker_specs("gpu")
    assert (cpu.queues, cpu.env, cpu.concurrency) == ("gpu", {"EVO_WORKER_DEVICE": "cpu"}, 1)
    assert "--prefetch-multiplier" in cpu.argv() and cpu.argv()[cpu.argv().index("--pool") + 1] == "prefork"

    monkeypatch.setattr(devices, "_nvidia_smi_gpus", lambda: (("0", "GPU-a", "NVIDIA H200"), ("1", "GPU-b", "NVIDIA H200")))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    control, *gpus = worker_specs("control,cpu,gpu")
    assert (control.queues, control.concurrency) == ("control,cpu", 2)
    assert [(g.name, g.env["CUDA_VISIBLE_DEVICES"], g.env["EVO_WORKER_DEVICE"]) for g in gpus] == [
        ("gpu0", "1", "0"), ("gpu1", "0", "0")]
    assert [g.env["CUDA_VISIBLE_DEVICES"] for g in worker_specs("gpu", gpus=[1])] == ["0"]
    with pytest.raises(ValueError, match="queues must be"):
        worker_specs("gpu,video")
