"""A job's way through the house: plan a generation, fan its evaluations out as a chord,
and let the chord's callback `advance` decide the next generation or the end.

All state is in the database, and every step is idempotent, so any process may die:
- planning a generation stores its candidates and moves `Job.generation` forward in one
  transaction, guarded by a compare-and-set on the old generation: a duplicate or late
  `advance` for an old generation changes nothing;
- `dispatch` only sends evaluations that have no finished verdict, so a resumed job never
  repeats finished work (and the evaluation task itself is idempotent, workers/tasks.py);
- the strategy's rng is seeded from (job seed, generation), so re-planning proposes the same;
- a generation whose LLM replies wait in the batch backend's files writes only a note
  (Job.error of the running job: what it waits for and how to continue); resuming re-plans
  the same prompts and picks the replies up.
No task waits on another: when `advance` finds evaluations still running (a redelivered
duplicate can fire a chord early) it schedules a re-check instead of blocking.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import random
from pathlib import Path

from celery import chord
from sqlalchemy import and_, func, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from db.models import Candidate, Evaluation, Job, JobCandidate, JobState, LLMCall, Verdict, utcnow
from db.session import session_scope
from evo.llm.batch import BatchPending
from evo.strategies import JobInfo, Member, Proposal, get_strategy
from workers.celery_app import app
from workers.protocol import HARNESS_VERSION, content_hash

log = logging.getLogger(__name__)

RECHECK_S = float(os.environ.get("EVO_ADVANCE_RECHECK_S", "2"))
FINISHED = tuple(v.value for v in Verdict if v is not Verdict.pending)


# --- the seed ------------------------------------------------------------------------------

def seed_module(task_name: str, language: str) -> str:
    """Dotted path of the task's seed kernel: the Task.seed module (Triton) or kernels/<task>_cuda.py."""
    from baselines import get_task
    return get_task(task_name).seed if language == "triton" else f"kernels.{task_name}_cuda"


def seed_source(task_name: str, language: str) -> str | None:
    spec = importlib.util.find_spec(seed_module(task_name, language))
    if spec is None or spec.origin is None:
        return None
    with open(spec.origin) as f:
        return f.read()


def seed_languages(job_language: str) -> list[str]:
    return ["triton", "cuda"] if job_language == "both" else [job_language]


# --- reading a job's state -----------------------------------------------------------------

def job_device(job: Job) -> str | None:
    """Where this job's candidates are evaluated: fixed by the seed's first verdict."""
    return job.config.get("device") if job.config else None


def history(session: Session, job: Job, device: str | None) -> list[Member]:
    """Every member of the job with its verdict on `device` (pending if none yet)."""
    eval_join = and_(Evaluation.candidate_id == Candidate.id,
                     Evaluation.device == device if device else Evaluation.status.in_(FINISHED))
    rows = session.execute(
        select(JobCandidate, Candidate, Evaluation)
        .join(Candidate, JobCandidate.candidate_id == Candidate.id)
        .outerjoin(Evaluation, eval_join)
        .where(JobCandidate.job_id == job.id)
        .order_by(JobCandidate.id)).all()
    members, seen = [], set()
    for jc, cand, ev in rows:
        if jc.candidate_id in seen:  # several finished devices before the job's device is known
            continue
        seen.add(jc.candidate_id)
        status = ev.status if ev else Verdict.pending.value
        members.append(Member(
            candidate_id=cand.id, source=cand.source, language=cand.language, generation=jc.generation,
            operator=jc.operator, parent_ids=tuple(jc.parent_ids or ()), status=status,
            runtime_ms=ev.runtime_ms if ev and status == Verdict.correct.value else None,
            error=ev.error if ev else None, name=cand.name, thought=cand.thought,
            speedup_eager=ev.speedup_eager if ev else None, sol_fraction=ev.sol_fraction if ev else None,
            timings=tuple(ev.timings or ()) if ev else (), island=jc.island))
    return members


def unusable_replies(session: Session, job: Job, limit: int = 4) -> tuple[str, ...]:
    """Why the LLM replies of the job's latest generation gave no candidate (add_members wrote
    it on their LLMCall rows). The latest generation's calls are those after every call that
    made a member of an earlier generation."""
    before = session.scalar(select(func.max(JobCandidate.llm_call_id))
                            .where(JobCandidate.job_id == job.id, JobCandidate.generation < job.generation))
    return tuple(session.scalars(
        select(LLMCall.error).where(LLMCall.job_id == job.id, LLMCall.id > (before or 0), LLMCall.error.is_not(None),
                                    LLMCall.reply.is_not(None), LLMCall.reply != "")  # a reply, not a failed call
        .order_by(LLMCall.id).limit(limit)))


def job_info(job: Job, device: str | None, unusable: tuple[str, ...] = ()) -> JobInfo:
    return JobInfo(id=job.id, task=job.task, strategy=job.strategy, language=job.language, budget=job.budget,
                   calls_used=job.calls_used, generation=job.generation + 1, config=dict(job.config or {}),
                   device=device or "", unusable_replies=unusable)


def generation_rng(job: Job, generation: int) -> random.Random:
    return random.Random(f"{job.config.get('seed', 0)}:{generation}")


# --- writing -------------------------------------------------------------------------------

def store_candidate(session: Session, task: str, source: str, language: str,
                    name: str | None = None, thought: str | None = None) -> Candidate:
    """The candidate row for this source, created once per (task, harness version, content)."""
    digest = content_hash(source, task)
    query = select(Candidate).where(Candidate.task == task, Candidate.harness_version == HARNESS_VERSION,
                                    Candidate.content_hash == digest)
    existing = session.scalar(query)
    if existing is not None:
        return existing
    candidate = Candidate(task=task, language=language, source=source, content_hash=digest,
                          harness_version=HARNESS_VERSION, name=name, thought=thought)
    try:
        with session.begin_nested():
            session.add(candidate)
    except IntegrityError:  # a concurrent job stored the same source first
        return session.scalar(query)
    return candidate


def add_members(session: Session, job: Job, generation: int, proposals: list[Proposal]) -> int:
    added = 0
    for p in proposals:
        if p.source is None:
            # No usable code: no Candidate (there is no source to store, hash or evaluate). The
            # reason goes on the job's own row of the call, which the LLM layer wrote, so the
            # next prompt's feedback shows it (unusable_replies); a failed call keeps its error.
            if p.llm_call_id is not None and p.error:
                session.execute(update(LLMCall).where(LLMCall.id == p.llm_call_id, LLMCall.error.is_(None))
                                .values(error=p.error))
            continue
        candidate = store_candidate(session, job.task, p.source, p.language, p.name, p.thought)
        already = session.scalar(select(JobCandidate.id).where(JobCandidate.job_id == job.id,
                                                                JobCandidate.candidate_id == candidate.id))
        if already is None:
            session.add(JobCandidate(job_id=job.id, candidate_id=candidate.id, generation=generation,
                                     operator=p.operator, parent_ids=list(p.parent_ids),
                                     llm_call_id=p.llm_call_id, island=p.island))
            added += 1
    return added


def finish(session: Session, job: Job, state: JobState, error: str | None = None) -> None:
    """End a queued or running job; a cancelled one stays cancelled."""
    active = (JobState.queued.value, JobState.running.value)
    session.execute(update(Job).where(Job.id == job.id, Job.state.in_(active))
                    .values(state=state.value, error=error, finished_at=utcnow()))


def budget_cost(strategy_uses_llm: bool, proposals: list[Proposal]) -> int:
    """LLM strategies pay one per LLM call; `tune` pays one per proposal."""
    if strategy_uses_llm:
        return sum(1 for p in proposals if p.llm_call_id is not None)
    return len(proposals)


# --- the steps -----------------------------------------------------------------------------

def start(job_id: int) -> str:
    """queued -> running with generation 0 = the seed kernel(s); a second call only dispatches."""
    with session_scope() as s:
        job = s.get(Job, job_id)
        if job is None:
            return "no such job"
        owned = s.execute(update(Job).where(Job.id == job_id, Job.state == JobState.queued.value)
                          .values(state=JobState.running.value, generation=0)).rowcount == 1
        if owned:
            seeds = []
            for language in seed_languages(job.language):
                source = seed_source(job.task, language)
                if source is None:
                    raise RuntimeError(f"task {job.task} has no {language} seed ({seed_module(job.task, language)})")
                seeds.append(Proposal(source=source, language=language, operator="seed",
                                      name=f"seed ({language})"))
            add_members(s, job, 0, seeds)
    return dispatch(job_id)


def dispatch(job_id: int) -> str:
    """Send the current generation's unfinished evaluations as a chord whose callback is advance."""
    with session_scope() as s:
        job = s.get(Job, job_id)
        if job is None or job.state != JobState.running.value:
            return "not running"
        generation = job.generation
        todo = [m.candidate_id for m in history(s, job, job_device(job))
                if m.generation == generation and m.status == Verdict.pending.value]
    callback = advance_task.si(job_id, generation)
    if todo:
        chord([evaluate_signature(cid, job_id) for cid in todo])(callback)
    else:
        callback.apply_async()
    return f"dispatched {len(todo)} evaluations of generation {generation}"


def evaluate_signature(candidate_id: int, job_id: int):
    return app.signature("workers.tasks.evaluate", args=(candidate_id, job_id), queue="gpu")


def advance(job_id: int, generation: int) -> str:
    """After generation `generation`: the next generation, a re-check later, or the end."""
    with session_scope() as s:
        job = s.get(Job, job_id)
        if job is None or job.state != JobState.running.value or job.generation != generation:
            return "stale"
        device = job_device(job)
        members = history(s, job, device)
        if any(m.generation == generation and m.status == Verdict.pending.value for m in members):
            advance_task.apply_async((job_id, generation), countdown=RECHECK_S)
            return "waiting for evaluations"
        if device is None:
            device = _first_device(s, job)
            if device is not None:
                job.config = {**(job.config or {}), "device": device}
                members = history(s, job, device)
        valid = sorted((m for m in members if m.valid), key=lambda m: m.runtime_ms)
        job.best_candidate_id = valid[0].candidate_id if valid else None
        info = job_info(job, device, unusable_replies(s, job))
        llm_model, llm_endpoint = job.llm_model, job.llm_endpoint
        rng = generation_rng(job, generation + 1)
        if job.calls_used >= job.budget:
            finish(s, job, JobState.done if valid else JobState.failed, None if valid else _no_valid(members))
            return "done: budget spent"
    strategy = get_strategy(info.strategy)
    llm = None
    if strategy.uses_llm:
        from evo.llm import client_for_job
        llm = client_for_job(info, model=llm_model, base_url=llm_endpoint)
    # Outside any transaction: LLM calls take seconds to minutes.
    try:
        proposals = strategy.propose(info, members, rng, llm)
    except BatchPending as pending:
        return wait_for_batch(job_id, generation, pending)
    cost = budget_cost(strategy.uses_llm, proposals)
    with session_scope() as s:
        job = s.get(Job, job_id)
        moved = s.execute(update(Job).where(Job.id == job_id, Job.generation == generation,
                                            Job.state == JobState.running.value)
                          .values(generation=generation + 1, calls_used=Job.calls_used + cost)).rowcount
        if moved != 1:
            return "stale"
        # Nothing new and nothing spent (no proposals, or only sources the job already tried):
        # another round would propose the same again.
        if add_members(s, job, generation + 1, proposals) == 0 and cost == 0:
            s.rollback()  # undo the generation step; the end is written in a fresh transaction
            finish(s, job, JobState.done if valid else JobState.failed, None if valid else _no_valid(members))
            return "done: nothing more to try"
    return dispatch(job_id)


def batch_note(job_id: int, pending: BatchPending) -> str:
    directory = Path(pending.directory).resolve()
    return (f"waiting for {pending.waiting} batch replies in {directory}; run `evo llm batch run {directory}` "
            f"(or `evo llm batch submit` / `fetch`), then `evo resume {job_id}`")


def jobs_waiting_on(session: Session, directory: str | Path) -> list[Job]:
    """Running jobs whose note (batch_note) says they wait for replies in `directory`."""
    marker = f" batch replies in {Path(directory).resolve()}; "
    return list(session.scalars(select(Job).where(Job.state == JobState.running.value,
                                                  Job.error.contains(marker, autoescape=True)).order_by(Job.id)))


def wait_for_batch(job_id: int, generation: int, pending: BatchPending) -> str:
    """The generation's prompts wait in the batch directory: the job stays running at this
    generation with nothing written but the note (Job.error of a running job says what it
    waits for); `evo resume` re-proposes the same prompts and picks the replies up."""
    note = batch_note(job_id, pending)
    with session_scope() as s:
        s.execute(update(Job).where(Job.id == job_id, Job.generation == generation,
                                    Job.state == JobState.running.value).values(error=note))
    return note


def _first_device(session: Session, job: Job) -> str | None:
    return session.scalar(
        select(Evaluation.device).join(JobCandidate, JobCandidate.candidate_id == Evaluation.candidate_id)
        .where(JobCandidate.job_id == job.id, Evaluation.status.in_(FINISHED))
        .order_by(Evaluation.finished_at).limit(1))


def _no_valid(members: list[Member]) -> str:
    seeds = [m for m in members if m.operator == "seed"]
    detail = "; ".join(f"seed {m.language}: {m.status}: {(m.error or '').splitlines()[0] if m.error else ''}"
                       for m in seeds)
    return f"no correct candidate ({detail})"


# --- Celery tasks (queue `control`) --------------------------------------------------------

def _guarded(job_id: int, step, *args) -> str:
    """Run a step; a bug or a strategy error fails the job with the reason instead of looping."""
    try:
        return step(job_id, *args)
    except OperationalError:
        raise  # database busy or gone: let Celery retry
    except Exception as e:
        log.exception("job %s failed", job_id)
        with session_scope() as s:
            job = s.get(Job, job_id)
            if job is not None:
                finish(s, job, JobState.failed, f"{type(e).__name__}: {e}")
        return f"failed: {e}"


@app.task(name="evo.orchestrate.start", autoretry_for=(OperationalError,), max_retries=5, retry_backoff=True)
def start_task(job_id: int) -> str:
    return _guarded(job_id, start)


@app.task(name="evo.orchestrate.advance", autoretry_for=(OperationalError,), max_retries=5, retry_backoff=True)
def advance_task(job_id: int, generation: int) -> str:
    return _guarded(job_id, advance, generation)


@app.task(name="evo.orchestrate.resume", autoretry_for=(OperationalError,), max_retries=5, retry_backoff=True)
def resume_task(job_id: int) -> str:
    return _guarded(job_id, dispatch)


# --- entry points for evo.jobs (CLI, web API) ----------------------------------------------

def enqueue(task_name: str, job_id: int, celery_app=None) -> None:
    """Send a control task by name: works from any process holding a Celery app for the broker."""
    (celery_app or app).send_task(f"evo.orchestrate.{task_name}", args=(job_id,), queue="control")
