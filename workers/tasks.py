"""The evaluation task (queue `gpu`): claim the candidate's Evaluation row, evaluate, record.

Idempotent under redelivery: the row is unique per (candidate, device) and carries an
attempts counter. A task that finds the row finished returns its verdict without work; one
that finds it claimed by another attempt (started less than the task time limit ago) retries
once that claim's lease has run out (the chord keeps waiting for it); one that finds a dead
attempt takes over, up to MAX_ATTEMPTS, after which the candidate is recorded as
runtime_error (a kernel that kills its worker every time). A chord header task must never
raise, or one bad kernel fails the whole generation, so `evaluate` returns a status dict.
"""
from __future__ import annotations

import logging
import os
import socket
from datetime import timedelta

from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init, worker_process_shutdown
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from db.models import Candidate, Evaluation, Job, JobState, Verdict, utcnow
from db.session import get_engine, session_scope
from workers.celery_app import app, task_time_limit
from workers.protocol import EvalResult

log = logging.getLogger(__name__)

MAX_ATTEMPTS = int(os.environ.get("EVO_MAX_ATTEMPTS", "3"))
ERROR_RETRIES = 3  # after an unexpected error (database unreachable...), before giving up

_evaluator = None  # one per worker process: it holds the evaluation subprocess (and its CUDA context)
_device: str | None = None


def worker_gpu() -> int | None:
    """The GPU this worker evaluates on: `evo worker` sets EVO_WORKER_DEVICE (a GPU index
    relative to CUDA_VISIBLE_DEVICES, or "cpu"); otherwise GPU 0 when there is one."""
    choice = os.environ.get("EVO_WORKER_DEVICE")
    if choice == "cpu":
        return None
    if choice is not None:
        return int(choice)
    from workers.devices import gpu_count
    return 0 if gpu_count() > 0 else None


def evaluator():
    global _evaluator
    if _evaluator is None:
        from workers.sandbox import Evaluator  # the evaluation process is spawned here, never in the parent
        _evaluator = Evaluator(gpu=worker_gpu())
    return _evaluator


def device() -> str:
    global _device
    if _device is None:
        from workers.devices import device_label
        _device = device_label(worker_gpu())
    return _device


@worker_process_init.connect
def _after_fork(**_):
    # The pool child must not share the parent's database connections.
    get_engine().dispose(close=False)
    # Warm start: a worker of the gpu queue spawns its evaluation process (torch, the CUDA
    # context) now, not on the first verdict. Spawning returns at once: Celery gives a pool
    # process only seconds to report up. The Celery parent never touches CUDA.
    if "gpu" in app.amqp.queues.consume_from:
        try:
            evaluator().start()
        except Exception:  # the first evaluation tries again and records what goes wrong
            log.exception("could not start the evaluation process early")


@worker_process_shutdown.connect
def _close_evaluator(**_):
    if _evaluator is not None:
        _evaluator.close()


def _lease() -> timedelta:
    return timedelta(seconds=task_time_limit())


def claim(candidate_id: int, device_name: str, worker: str) -> tuple[str, Evaluation | None]:
    """('run', row) when this attempt owns the evaluation; otherwise (reason, row)."""
    with session_scope() as s:
        row = s.scalar(select(Evaluation).where(Evaluation.candidate_id == candidate_id,
                                                Evaluation.device == device_name).with_for_update())
        if row is None:
            row = Evaluation(candidate_id=candidate_id, device=device_name, attempts=0)
            try:
                with s.begin_nested():
                    s.add(row)
            except IntegrityError:  # another worker created it first: take the normal path
                row = s.scalar(select(Evaluation).where(Evaluation.candidate_id == candidate_id,
                                                        Evaluation.device == device_name).with_for_update())
        if row.status != Verdict.pending.value:
            return "finished", row
        now = utcnow()
        if row.attempts and row.started_at and row.started_at > now - _lease():
            return "in_flight", row
        if row.attempts >= MAX_ATTEMPTS:
            row.status = Verdict.runtime_error.value
            row.error = (f"the evaluation was lost {row.attempts} times (worker killed or crashed while "
                         f"running this kernel); giving up")
            row.finished_at = now
            return "finished", row
        # Compare-and-set on the attempts counter: on SQLite (no row locks) a concurrent claim loses here.
        claimed = s.execute(Evaluation.__table__.update()
                            .where(Evaluation.id == row.id, Evaluation.attempts == row.attempts,
                                   Evaluation.status == Verdict.pending.value)
                            .values(attempts=row.attempts + 1, started_at=now, worker=worker)).rowcount
        return ("run", row) if claimed == 1 else ("in_flight", row)


def record(evaluation_id: int, result: EvalResult) -> bool:
    """Write a finished result into the claimed row; False if another attempt finished first."""
    with session_scope() as s:
        written = s.execute(Evaluation.__table__.update()
                            .where(Evaluation.id == evaluation_id, Evaluation.status == Verdict.pending.value)
                            .values(status=result.status, error=result.error,
                                    timings=[t.model_dump() for t in result.timings],
                                    runtime_ms=result.runtime_ms, speedup_eager=result.speedup_eager,
                                    speedup_compile=result.speedup_compile, speedup_seed=result.speedup_seed,
                                    sol_fraction=result.sol_fraction,
                                    environment={**result.environment, "harness_version": result.harness_version},
                                    phases=result.phases, finished_at=utcnow())).rowcount
    return written == 1


def evaluate_candidate(candidate_id: int, job_id: int | None = None) -> dict:
    with session_scope() as s:
        if job_id is not None:
            job = s.get(Job, job_id)
            if job is None or job.state == JobState.cancelled.value:
                return {"candidate_id": candidate_id, "status": "skipped", "reason": "job cancelled"}
        candidate = s.get(Candidate, candidate_id)
        if candidate is None:
            return {"candidate_id": candidate_id, "status": "skipped", "reason": "no such candidate"}
        task, source, language = candidate.task, candidate.source, candidate.language
    device_name = device()
    outcome, row = claim(candidate_id, device_name, f"{socket.gethostname()}:{os.getpid()}")
    if outcome == "in_flight":
        # Another attempt holds the claim. If it is alive it finishes the row; if it died (its
        # worker was killed and this is the redelivered task, or a resume), look again once its
        # lease has run out, then take over.
        left = (row.started_at + _lease() - utcnow()).total_seconds() if row.started_at else 0
        return {"candidate_id": candidate_id, "status": row.status, "reason": outcome,
                "retry_in": max(left, 0) + 1}
    if outcome != "run":
        return {"candidate_id": candidate_id, "status": row.status, "reason": outcome}
    try:
        result = evaluator().evaluate(task, source, language, time_it=True)
    except SoftTimeLimitExceeded:
        result = EvalResult(status="timeout", device=device_name,
                            error=f"the evaluation exceeded the task time limit ({app.conf.task_soft_time_limit} s)")
    except Exception as e:  # the harness itself failed: record it, or the job would wait on this row forever
        log.exception("the evaluator failed on candidate %s", candidate_id)
        result = EvalResult(status="runtime_error", device=device_name,
                            error=f"the evaluation harness failed: {type(e).__name__}: {e}")
    record(row.id, result)
    return {"candidate_id": candidate_id, "status": result.status, "reason": "evaluated"}


@app.task(name="workers.tasks.evaluate", bind=True, acks_late=True, reject_on_worker_lost=True)
def evaluate(self, candidate_id: int, job_id: int | None = None) -> dict:
    try:
        outcome = evaluate_candidate(candidate_id, job_id)
    except Exception as e:  # the database, most likely (the evaluator's own failures are verdicts)
        log.exception("evaluation of candidate %s failed", candidate_id)
        if self.request.retries < ERROR_RETRIES:
            raise self.retry(countdown=5 * (self.request.retries + 1))
        # A chord header must not raise; the row stays pending, and `evo resume` sends it again.
        return {"candidate_id": candidate_id, "status": "error", "reason": f"{type(e).__name__}: {e}"}
    if "retry_in" in outcome:  # not done yet: the chord keeps waiting for this header task
        raise self.retry(countdown=outcome["retry_in"], max_retries=None)
    return outcome
