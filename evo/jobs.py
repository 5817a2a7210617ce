"""Submit, cancel and resume jobs: the one implementation behind the CLI and the web API.

Everything is validated before anything is written, so bad input leaves no half-made job.
The functions commit the given session before they enqueue, so the control worker finds
the row it is told about.
"""
from __future__ import annotations

import json
import os

from sqlalchemy.orm import Session

from db.models import Job, JobState, utcnow
from evo.strategies import STRATEGIES

LANGUAGES = ("triton", "cuda", "both")
FINAL_STATES = (JobState.done.value, JobState.failed.value, JobState.cancelled.value)


class JobError(ValueError):
    """Bad input for a job operation; the message is one line for the user."""


class SeedError(JobError):
    """The task's seed kernel does not load: a fault of this installation, not of the request
    (the API answers 500 with the message)."""


def validate(task: str, strategy: str, budget: int, language: str, config: dict | None) -> None:
    # Cheap checks first: the task registry imports torch and every task module.
    if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
        raise JobError(f"budget must be a positive whole number, got {budget!r}")
    if language not in LANGUAGES:
        raise JobError(f"language must be one of {', '.join(LANGUAGES)}, got {language!r}")
    if strategy not in STRATEGIES:
        raise JobError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    if config is not None:
        if not isinstance(config, dict):
            raise JobError("config must be a JSON object")
        try:
            json.dumps(config)
        except (TypeError, ValueError) as e:
            raise JobError(f"config is not JSON-serializable: {e}") from None
        seed = config.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise JobError(f"config seed must be an integer, got {seed!r}")

    from baselines import UnknownTaskError, get_task
    from evo.orchestrate import seed_languages, seed_module, seed_source
    try:
        get_task(task)
    except UnknownTaskError as e:
        raise JobError(str(e)) from None
    for lang in seed_languages(language):
        module = seed_module(task, lang)
        # Finding the module imports its packages; compiling catches a syntax error. Not an
        # import of the seed itself: it may need cupy, which only the GPU workers have.
        try:
            source = seed_source(task, lang)
            if source is not None:
                compile(source, module, "exec")
        except Exception as e:
            detail = " ".join(f"{type(e).__name__}: {e}".split())
            raise SeedError(f"seed kernel {module} failed to import: {detail}") from None
        if source is None:
            raise JobError(f"task {task} has no {lang} seed kernel ({module})")


def submit_job(session: Session, task: str, strategy: str = "tune", budget: int = 45, language: str = "triton",
               llm: str | None = None, config: dict | None = None, *, enqueue: bool = True,
               celery_app=None) -> Job:
    """Create a queued job and hand it to the control queue. `llm` is the model name
    (default EVO_LLM_MODEL) for LLM strategies; `tune` records none."""
    validate(task, strategy, budget, language, config)
    uses_llm = strategy != "tune"
    job = Job(task=task, strategy=strategy, budget=budget, language=language, config=dict(config or {}),
              llm_model=(llm or os.environ.get("EVO_LLM_MODEL")) if uses_llm else None,
              llm_endpoint=os.environ.get("EVO_LLM_BASE_URL") if uses_llm else None,
              state=JobState.queued.value)
    session.add(job)
    session.commit()
    if enqueue:
        from evo.orchestrate import enqueue as send
        send("start", job.id, celery_app)
    return job


def get_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise JobError(f"no job {job_id}")
    return job


def cancel_job(session: Session, job_id: int) -> Job:
    """Stop a job: its evaluations not yet started are skipped, `advance` ends nothing more."""
    job = get_job(session, job_id)
    if job.state in (JobState.done.value, JobState.failed.value):
        raise JobError(f"job {job_id} already ended ({job.state})")
    if job.state != JobState.cancelled.value:
        job.state = JobState.cancelled.value
        job.finished_at = utcnow()
        session.commit()
    return job


def is_waiting(state: str, error: str | None) -> bool:
    """A running job with a note waits for something outside evo: batch replies (the note says
    where, and how to continue); `resume_job` clears the note and continues it."""
    return state == JobState.running.value and error is not None


def resume_waiting_jobs(session: Session, batch_dir, *, celery_app=None) -> list[Job]:
    """Resume the jobs waiting for replies in `batch_dir` (after `evo llm batch run/fetch`).
    A job whose replies are still incomplete writes its note again and keeps waiting."""
    from evo.orchestrate import jobs_waiting_on
    return [resume_job(session, job.id, celery_app=celery_app) for job in jobs_waiting_on(session, batch_dir)]


def resume_job(session: Session, job_id: int, *, celery_app=None) -> Job:
    """Continue a job whose control process died (or that was cancelled or failed, or that
    waits for batch replies): re-sends the current generation's unfinished evaluations;
    finished ones are kept."""
    job = get_job(session, job_id)
    if job.state == JobState.done.value:
        raise JobError(f"job {job_id} is done; submit a new job to search further")
    from evo.orchestrate import enqueue as send
    if job.state == JobState.queued.value:
        session.commit()
        send("start", job.id, celery_app)
        return job
    job.state = JobState.running.value
    job.error = None
    job.finished_at = None
    session.commit()
    send("resume", job.id, celery_app)
    return job
