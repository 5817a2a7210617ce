"""The JSON API. Shapes are pydantic models, so /openapi.json documents every field."""
from __future__ import annotations

import math
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Generic, Literal, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy.orm import Session

from db.models import Candidate, Job
from evo import leaderboard
from evo.leaderboard import generation_curve, job_progress
from evo.strategies import STRATEGIES
from evo.web import queries
from evo.web.app import get_session, require_token

if TYPE_CHECKING:
    from celery import Celery

T = TypeVar("T")


MAX_ID = 2**31 - 1  # ids are 32-bit integers in PostgreSQL
JobId = Annotated[int, Path(ge=1, le=MAX_ID, description="job id")]
CandidateId = Annotated[int, Path(ge=1, le=MAX_ID, description="candidate id")]
Limit = Annotated[int, Query(ge=1, le=200, description="page size")]
Offset = Annotated[int, Query(ge=0, le=10**9, description="rows to skip")]
# Empty means "any": a filter form's "all" option sends `task=`. Spelled-out ASCII classes: the
# schema's regex dialect (ECMA-262) and Python's disagree on what \w matches.
TaskName = Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_.\-]{0,64}$", description="task name, e.g. softmax")]
DeviceName = Annotated[str | None, Query(pattern=r"^[^\x00]{0,128}$", description="GPU name or cpu-interpreter")]


class Error(BaseModel):
    error: str


ERRORS = {code: {"model": Error} for code in (400, 401, 403, 404, 409, 422)}
# Routes answering text/plain: FastAPI would file their `model` errors under text/plain too.
TEXT_ERRORS = {code: {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
               for code in (404, 422)}


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int
    next_offset: int | None = Field(description="offset of the next page; null on the last page")


def page(items: list, total: int, limit: int, offset: int) -> dict:
    return dict(items=items, total=total, limit=limit, offset=offset,
                next_offset=offset + limit if offset + limit < total else None)


class JobOut(BaseModel):
    """A job with its progress (evo.leaderboard.JobProgress): counts are on the job's device."""
    model_config = ConfigDict(from_attributes=True)
    id: int
    task: str
    strategy: str
    language: str
    state: str
    generation: int
    budget: int
    calls_used: int
    llm_model: str | None
    device: str | None = Field(description="where its candidates are evaluated; null until the seed's verdict")
    proposed: int
    evaluated: int
    valid: int
    valid_rate: float | None = Field(description="valid / evaluated; null before any verdict")
    best_candidate_id: int | None
    best_runtime_ms: float | None
    best_speedup_eager: float | None
    best_speedup_compile: float | None
    best_speedup_seed: float | None
    best_sol_fraction: float | None
    error: str | None
    created_at: datetime | None
    finished_at: datetime | None


class GenerationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    generation: int
    proposed: int
    evaluated: int
    valid: int
    valid_rate: float | None
    gen_best_runtime_ms: float | None = Field(description="the best of this generation alone")
    best_runtime_ms: float | None = Field(description="the best so far")
    best_speedup_eager: float | None = Field(description="of the best so far")
    best_speedup_seed: float | None
    best_candidate_id: int | None


class JobDetail(JobOut):
    llm_endpoint: str | None
    config: dict[str, Any]
    generations: list[GenerationOut]


class JobSubmit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # The names are checked by evo.jobs.submit_job; the schema lists them for clients.
    task: str = Field(min_length=1, max_length=64, json_schema_extra=lambda s: s.update(enum=task_names()))
    strategy: str = Field(min_length=1, max_length=64, json_schema_extra=lambda s: s.update(enum=list(STRATEGIES)))
    budget: int = Field(ge=1, le=100_000, description="LLM calls (for `tune`: candidates proposed)")
    language: Literal["triton", "cuda", "both"] = "triton"
    # The endpoint is the server's (EVO_LLM_BASE_URL): a client must not point the server at any URL.
    llm_model: str | None = Field(None, max_length=200, description="default: the server's EVO_LLM_MODEL")
    config: dict[str, Any] = Field(default_factory=dict, description="population size, samplers, seed, temperature...")

    @model_validator(mode="after")
    def storable(self):
        # PostgreSQL refuses NUL characters in text and NaN/Infinity in JSON: say so instead of failing on insert.
        def check(value, where):
            if isinstance(value, str) and "\x00" in value:
                raise ValueError(f"{where}: NUL characters are not allowed")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{where}: numbers must be finite")
            if isinstance(value, dict):
                for k, v in value.items():
                    check(k, where)
                    check(v, f"{where}.{k}")
            if isinstance(value, list):
                for i, v in enumerate(value):
                    check(v, f"{where}[{i}]")
        check(self.model_dump(), "body")
        return self


def task_names() -> list[str]:
    from baselines import all_tasks  # torch: imported when the schema is first built, not at startup
    return [t.name for t in all_tasks()]


class SubmitOut(JobOut):
    enqueued: bool = Field(description="whether the job was handed to the workers now")
    note: str | None = None


class EvaluationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    device: str
    status: str
    attempts: int
    error: str | None
    timings: list[dict[str, Any]]
    runtime_ms: float | None
    speedup_eager: float | None
    speedup_compile: float | None
    speedup_seed: float | None
    sol_fraction: float | None
    environment: dict[str, Any]
    phases: dict[str, Any]
    worker: str | None
    started_at: datetime | None
    finished_at: datetime | None


class MembershipOut(BaseModel):
    job_id: int
    strategy: str
    generation: int
    operator: str
    parent_ids: list[int]
    llm_call_id: int | None
    island: int | None


class CandidateOut(BaseModel):
    id: int
    task: str
    language: str
    name: str | None
    thought: str | None
    content_hash: str
    harness_version: str
    created_at: datetime
    source: str
    evaluations: list[EvaluationOut]
    jobs: list[MembershipOut] = Field(description="the latest jobs (up to 20) that proposed it, with generation, "
                                                  "operator and parents")
    job_count: int = Field(description="all jobs that proposed it (a seed belongs to every job of its task)")
    child_ids: list[int]


class PopulationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    candidate_id: int
    generation: int
    operator: str
    parent_ids: list[int]
    name: str | None
    language: str
    status: str | None
    device: str | None
    runtime_ms: float | None
    speedup_eager: float | None


router = APIRouter(prefix="/api", responses={422: {"model": Error}})


def get_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id}")
    return job


def job_detail(session: Session, job: Job) -> JobDetail:
    return JobDetail(**JobOut.model_validate(job_progress(session, job.id)).model_dump(),
                     llm_endpoint=job.llm_endpoint, config=job.config or {},
                     generations=[GenerationOut.model_validate(p) for p in generation_curve(session, job.id)])


def producer(request: Request) -> Celery | None:
    """The Celery app that hands jobs to the control queue; None without a broker. It publishes
    only (no result backend) and gives up on an unreachable broker within about a second."""
    state = request.app.state
    if not state.broker_url:
        return None
    if state.celery is None:
        from workers.celery_app import create_app as celery_app
        state.celery = celery_app(state.broker_url)
        state.celery.conf.update(result_backend=None, broker_connection_timeout=2, task_publish_retry_policy={
            "max_retries": 2, "interval_start": 0, "interval_step": 0.25, "interval_max": 0.5})
    return state.celery


@router.post("/jobs", status_code=201, response_model=SubmitOut, responses={**ERRORS, 500: {"model": Error}},
             dependencies=[Depends(require_token)], summary="Submit an optimization job")
def submit(body: JobSubmit, request: Request, session: Session = Depends(get_session)):
    """Creates the job (state `queued`) and hands it to the workers through the broker
    (EVO_BROKER_URL). Without a broker, or when the broker cannot be reached, the job is
    still created and stays queued (`enqueued: false`, `note` says why); `evo resume ID`
    hands it over later."""
    from evo.jobs import JobError, SeedError, submit_job  # imports the task registry (torch): only writes pay for it

    try:
        job = submit_job(session, body.task, body.strategy, body.budget, language=body.language,
                         llm=body.llm_model, config=body.config, enqueue=False)
    except SeedError as e:  # the server's own code is broken, not the request
        raise HTTPException(500, str(e)) from None
    except JobError as e:
        raise HTTPException(422, str(e)) from None
    celery, enqueued, note = producer(request), False, None
    if celery is None:
        note = f"no broker configured (EVO_BROKER_URL): the job stays queued; `evo resume {job.id}` starts it"
    else:
        from kombu.exceptions import OperationalError

        from db.session import ConfigError
        from evo.orchestrate import enqueue
        try:
            enqueue("start", job.id, celery)
            enqueued = True
        except (ConfigError, OperationalError, OSError) as e:
            note = f"the broker did not take the job ({e}); it stays queued: `evo resume {job.id}` retries"
    return SubmitOut(**JobOut.model_validate(job_progress(session, job.id)).model_dump(), enqueued=enqueued, note=note)


@router.get("/jobs", response_model=Page[JobOut], summary="List jobs with their progress, newest first")
def list_jobs(limit: Limit = 50, offset: Offset = 0,
              state: Annotated[str | None, Query(pattern=r"^(queued|running|done|failed|cancelled)$")] = None,
              task: TaskName = None, session: Session = Depends(get_session)):
    task = task or None
    jobs = leaderboard.list_jobs(session, state=state, task=task, limit=limit, offset=offset)
    return page(jobs, queries.count_jobs(session, state=state, task=task), limit, offset)


@router.get("/jobs/{job_id}", response_model=JobDetail, responses=ERRORS,
            summary="A job with its progress and per-generation curve")
def read_job(job_id: JobId, session: Session = Depends(get_session)):
    return job_detail(session, get_job(session, job_id))


@router.get("/jobs/{job_id}/candidates", response_model=Page[PopulationOut], responses=ERRORS,
            summary="A job's population, by generation")
def job_candidates(job_id: JobId, limit: Limit = 50, offset: Offset = 0, session: Session = Depends(get_session)):
    get_job(session, job_id)
    rows, total = queries.population(session, job_id, limit, offset)
    return page(rows, total, limit, offset)


@router.get("/jobs/{job_id}/source", response_class=PlainTextResponse, responses=TEXT_ERRORS,
            summary="The source of a job's best candidate")
def job_source(job_id: JobId, session: Session = Depends(get_session)):
    job = get_job(session, job_id)
    if job.best_candidate_id is None:
        raise HTTPException(404, f"job {job_id} has no valid candidate yet")
    return source_response(session.get(Candidate, job.best_candidate_id))


@router.post("/jobs/{job_id}/cancel", response_model=JobOut, responses=ERRORS,
             dependencies=[Depends(require_token)], summary="Cancel a queued or running job")
def cancel(job_id: JobId, session: Session = Depends(get_session)):
    """Pending evaluations are skipped and no further generation is planned; cancelling a
    cancelled job is a no-op; a done or failed job answers 409."""
    cancel_or_conflict(session, job_id)
    return job_progress(session, job_id)


def cancel_or_conflict(session: Session, job_id: int) -> None:
    from evo.jobs import JobError, cancel_job

    get_job(session, job_id)
    try:
        cancel_job(session, job_id)
    except JobError as e:
        raise HTTPException(409, str(e)) from None


@router.get("/leaderboard", response_model=list[leaderboard.LeaderRow], responses=ERRORS,
            summary="The fastest correct kernels per task and GPU")
def read_leaderboard(task: TaskName = None, gpu: DeviceName = None,
                     per_task: Annotated[int, Query(ge=1, le=100, description="rows per task and GPU")] = 10,
                     session: Session = Depends(get_session)):
    return leaderboard.best_kernels(session, task=task or None, device=gpu or None, per_task=per_task)


def candidate_out(detail: queries.CandidateDetail) -> CandidateOut:
    c = detail.candidate
    return CandidateOut(
        id=c.id, task=c.task, language=c.language, name=c.name, thought=c.thought, content_hash=c.content_hash,
        harness_version=c.harness_version, created_at=c.created_at, source=c.source,
        evaluations=[EvaluationOut.model_validate(e) for e in detail.evaluations],
        jobs=[MembershipOut(job_id=m.job.id, strategy=m.job.strategy, generation=m.member.generation,
                            operator=m.member.operator, parent_ids=list(m.member.parent_ids or []),
                            llm_call_id=m.member.llm_call_id, island=m.member.island) for m in detail.memberships],
        job_count=detail.job_count,
        child_ids=[n.candidate_id for n in detail.children])


@router.get("/candidates/{candidate_id}", response_model=CandidateOut, responses=ERRORS,
            summary="A candidate with its source, evaluations and lineage")
def read_candidate(candidate_id: CandidateId, session: Session = Depends(get_session)):
    detail = queries.candidate_detail(session, candidate_id)
    if detail is None:
        raise HTTPException(404, f"no candidate {candidate_id}")
    return candidate_out(detail)


def source_response(candidate: Candidate) -> PlainTextResponse:
    filename = f"{candidate.task}_{candidate.id}.py"
    return PlainTextResponse(candidate.source, headers={"Content-Disposition": f'inline; filename="{filename}"'})


@router.get("/candidates/{candidate_id}/source", response_class=PlainTextResponse, responses=TEXT_ERRORS,
            summary="A candidate's source as a Python module")
def candidate_source(candidate_id: CandidateId, session: Session = Depends(get_session)):
    candidate = session.get(Candidate, candidate_id)
    if candidate is None:
        raise HTTPException(404, f"no candidate {candidate_id}")
    return source_response(candidate)
