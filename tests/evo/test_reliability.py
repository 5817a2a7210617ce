"""Jobs survive faults: real Redis, real worker processes, the CPU interpreter evaluating.

Every wait polls the database with a deadline. Limits are short (conftest.Cluster): a task
of a dead worker comes back after ~16 s (the visibility timeout).
"""
import socket

from sqlalchemy import select

from db.models import Evaluation, Job, JobCandidate
from db.session import session_scope
from evo.embedded import start_redis, stop_process
from evo.jobs import cancel_job

REDIS_DB = 6
FINAL = ("done", "failed", "cancelled")


def job(job_id: int) -> Job:
    with session_scope() as s:
        return s.get(Job, job_id)


def finished(job_id: int) -> bool:
    return job(job_id).state in FINAL


def members(job_id: int) -> dict[int, list[Evaluation]]:
    """candidate id -> its evaluation rows, for every member of the job."""
    with session_scope() as s:
        ids = list(s.scalars(select(JobCandidate.candidate_id).where(JobCandidate.job_id == job_id)))
        rows = list(s.scalars(select(Evaluation).where(Evaluation.candidate_id.in_(ids))))
    return {cid: [r for r in rows if r.candidate_id == cid] for cid in ids}


def assert_completed_once(job_id: int, log: str = "") -> dict[int, Evaluation]:
    j = job(job_id)
    assert j.state == "done" and j.best_candidate_id is not None, (j.state, j.error, log)
    evaluated = members(job_id)
    assert all(len(rows) == 1 and rows[0].status != "pending" for rows in evaluated.values()), evaluated
    return {cid: rows[0] for cid, rows in evaluated.items()}


def test_sigkill_gpu_worker_mid_evaluation(cluster, poll):
    cluster.start_worker("control", "control,cpu")
    victim = cluster.start_worker("gpu-a", "gpu")
    job_id = cluster.submit(budget=2, samplers=2)

    def seed_running():
        rows = [r for rs in members(job_id).values() for r in rs]
        return rows and rows[0].status == "pending" and rows[0].attempts == 1 and rows[0]

    claimed = poll(seed_running, 60, "the seed's evaluation to start")
    cluster.kill(victim)
    cluster.start_worker("gpu-b", "gpu")
    poll(lambda: finished(job_id), 100, "the job to finish after the kill")

    rows = assert_completed_once(job_id, cluster.log_tail())
    seed = rows[claimed.candidate_id]
    assert (seed.status, seed.attempts) == ("correct", 2)  # the killed attempt, then the other worker's
    assert seed.worker != claimed.worker
    assert len(rows) == 3  # the seed and two tuned candidates, each evaluated exactly once


def test_redis_restart_mid_job(cluster_for, tmp_path, poll):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = tmp_path / "redis-data"
    data.mkdir()
    redis = start_redis(data, port=port, persist=True)
    try:
        cluster = cluster_for(f"redis://127.0.0.1:{port}/0")
        cluster.start_worker("control", "control,cpu")
        cluster.start_worker("gpu", "gpu")
        job_id = cluster.submit(budget=4, samplers=2)
        poll(lambda: job(job_id).generation >= 1, 60, "generation 1 to be planned")
        stop_process(redis)  # graceful: the append-only file keeps queued tasks
        redis = start_redis(data, port=port, persist=True)
        poll(lambda: finished(job_id), 100, "the job to finish after the Redis restart")
        rows = assert_completed_once(job_id, cluster.log_tail())
        assert len(rows) == 5
    finally:
        stop_process(redis)


def test_cancel_one_of_two_jobs_sharing_workers(cluster, poll):
    cluster.start_worker("control", "control,cpu")
    cluster.start_worker("gpu", "gpu")
    doomed = cluster.submit(budget=8, samplers=4, seed=1)
    kept = cluster.submit(budget=4, samplers=2, seed=2)
    poll(lambda: job(doomed).generation >= 1, 60, "the first job's generation 1 to be planned")
    with session_scope() as s:
        cancel_job(s, doomed)
    poll(lambda: finished(kept), 100, "the other job to finish")

    assert_completed_once(kept, cluster.log_tail())
    d = job(doomed)
    assert (d.state, d.generation) == ("cancelled", 1)  # it planned nothing after the cancel
    # Both jobs start from the same seed, so they may share candidates: only the doomed job's own count.
    shared = set(members(kept))
    own = {cid: rows for cid, rows in members(doomed).items() if cid not in shared}
    skipped = [cid for cid, rows in own.items() if not rows or rows[0].status == "pending"]
    assert skipped, "the cancelled job's pending evaluations should have been skipped"
    cancelled_at = d.finished_at.replace(tzinfo=None)
    assert not [r for rows in own.values() for r in rows if r.started_at and r.started_at.replace(tzinfo=None) > cancelled_at]


def test_resume_after_the_control_process_died(cluster, poll, cli, redis_url):
    import redis

    control = cluster.start_worker("control", "control,cpu")
    gpu = cluster.start_worker("gpu", "gpu")
    job_id = cluster.submit(budget=4, samplers=2)

    def some_of_gen1_done():
        j = job(job_id)
        with session_scope() as s:
            done = s.scalars(select(Evaluation).join(JobCandidate, JobCandidate.candidate_id == Evaluation.candidate_id)
                             .where(JobCandidate.job_id == job_id, JobCandidate.generation == 1,
                                    Evaluation.status != "pending")).all()
        return j.generation == 1 and done

    poll(some_of_gen1_done, 60, "an evaluation of generation 1 to finish")
    # The worst case: the control process and the workers die and Redis loses every queued task.
    cluster.kill(control)
    cluster.kill(gpu)
    redis.Redis.from_url(redis_url).flushdb()
    before = {cid: (rows[0].status, rows[0].attempts, rows[0].finished_at)
              for cid, rows in members(job_id).items() if rows and rows[0].status != "pending"}
    assert job(job_id).state == "running"

    cluster.start_worker("control2", "control,cpu")
    cluster.start_worker("gpu2", "gpu")
    result = cli("resume", str(job_id), "--no-follow", env=cluster.env)
    assert result.returncode == 0, result.stderr
    poll(lambda: finished(job_id), 100, "the resumed job to finish")

    rows = assert_completed_once(job_id, cluster.log_tail())
    assert len(rows) == 5
    for cid, (status, attempts, finished_at) in before.items():  # finished work was not repeated
        assert (rows[cid].status, rows[cid].attempts, rows[cid].finished_at) == (status, attempts, finished_at)

    # Late and duplicate control messages change nothing.
    end = job(job_id)
    late = [cluster.app.send_task("evo.orchestrate.advance", args=(job_id, 1), queue="control"),
            cluster.app.send_task("evo.orchestrate.start", args=(job_id,), queue="control"),
            cluster.app.send_task("evo.orchestrate.resume", args=(job_id,), queue="control")]
    assert [r.get(timeout=60) for r in late] == ["stale", "not running", "not running"]
    after = job(job_id)
    assert (after.state, after.generation, after.calls_used, after.best_candidate_id) == (
        end.state, end.generation, end.calls_used, end.best_candidate_id)
    assert members(job_id).keys() == rows.keys()
