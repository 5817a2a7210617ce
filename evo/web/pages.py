"""Server-rendered pages: leaderboard, jobs, a job, a candidate. No JavaScript needed."""
from __future__ import annotations

from itertools import groupby
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import RedirectResponse
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer
from sqlalchemy.orm import Session

from db.models import Candidate, Evaluation
from evo.leaderboard import LeaderRow, best_kernels, distinct_values, list_jobs
from evo.web import queries
from evo.web.api import CandidateId, DeviceName, JobId, Offset, TaskName, cancel_or_conflict, get_job, job_detail
from evo.web.app import check_token, get_session, templates
from evo.web.plots import generation_plot

router = APIRouter(include_in_schema=False)
PAGE_SIZE = 50
PER_TASK = 10  # leaderboard rows per task and GPU
REFRESH_S = 5  # job pages of live jobs reload this often
SORT_KEYS = {  # column -> (row attribute, larger is better)
    "speedup_eager": ("speedup_eager", True),
    "speedup_compile": ("speedup_compile", True),
    "speedup_seed": ("speedup_seed", True),
    "sol_fraction": ("sol_fraction", True),
    "runtime_ms": ("runtime_ms", False),
    "date": ("date", True),
}
Sort = Literal[tuple(SORT_KEYS)]
_formatter = HtmlFormatter(nowrap=False, linenos="table", cssclass="highlight")
PYGMENTS_CSS = _formatter.get_style_defs(".highlight")


def sorted_rows(rows: list[LeaderRow], sort: str, order: str | None) -> list[LeaderRow]:
    """Missing values last in either direction; `order` defaults to best first."""
    attr, larger_better = SORT_KEYS[sort]
    descending = larger_better if order is None else order == "desc"
    present = [r for r in rows if getattr(r, attr) is not None]
    missing = [r for r in rows if getattr(r, attr) is None]
    return sorted(present, key=lambda r: getattr(r, attr), reverse=descending) + missing


@router.get("/")
def leaderboard_page(request: Request, task: TaskName = None, gpu: DeviceName = None, sort: Sort = "speedup_eager",
                     order: Annotated[Literal["asc", "desc"] | None, Query()] = None,
                     session: Session = Depends(get_session)):
    task, gpu = task or None, gpu or None
    rows = best_kernels(session, task=task, device=gpu, per_task=PER_TASK)
    # best_kernels orders by task, then device: one section per task, one table per GPU.
    groups = [(name, [(device, sorted_rows(list(device_rows), sort, order))
                      for device, device_rows in groupby(task_rows, key=lambda r: r.device)])
              for name, task_rows in groupby(rows, key=lambda r: r.task)]
    tasks = distinct_values(session, Candidate.task)
    gpus = distinct_values(session, Evaluation.device, Evaluation.status == "correct")
    return templates.TemplateResponse(request, "leaderboard.html", dict(
        groups=groups, tasks=tasks, gpus=gpus, task=task, gpu=gpu, sort=sort, order=order))


@router.get("/jobs")
def jobs_page(request: Request, offset: Offset = 0, session: Session = Depends(get_session)):
    jobs = list_jobs(session, limit=PAGE_SIZE, offset=offset)
    return templates.TemplateResponse(request, "jobs.html", dict(
        jobs=jobs, total=queries.count_jobs(session), offset=offset, page_size=PAGE_SIZE))


@router.get("/jobs/{job_id}")
def job_page(request: Request, job_id: JobId, offset: Offset = 0, session: Session = Depends(get_session)):
    job = get_job(session, job_id)
    detail = job_detail(session, job)
    members, total = queries.population(session, job_id, PAGE_SIZE, offset)
    live = job.state in ("queued", "running")
    return templates.TemplateResponse(request, "job.html", dict(
        job=detail, plot=generation_plot(detail.generations), members=members, total=total, offset=offset,
        page_size=PAGE_SIZE, refresh_s=REFRESH_S if live else None, cancellable=live,
        message=request.query_params.get("message")))


@router.get("/jobs/{job_id}/cancel")
def cancel_page(request: Request, job_id: JobId, session: Session = Depends(get_session)):
    """The form is on a page of its own: the live job page reloads and would lose a typed token."""
    return templates.TemplateResponse(request, "cancel.html", dict(job=get_job(session, job_id)))


@router.post("/jobs/{job_id}/cancel")
def cancel_form(request: Request, job_id: JobId, token: Annotated[str, Form()] = "",
                session: Session = Depends(get_session)):
    """The cancel button: a form carrying the API token, answered with a redirect to the job."""
    check_token(request, token or None)
    cancel_or_conflict(session, job_id)
    return RedirectResponse(f"/jobs/{job_id}?message=cancelled", status_code=303)


@router.get("/candidates/{candidate_id}")
def candidate_page(request: Request, candidate_id: CandidateId, session: Session = Depends(get_session)):
    detail = queries.candidate_detail(session, candidate_id)
    if detail is None:
        raise HTTPException(404, f"no candidate {candidate_id}")
    code = highlight(detail.candidate.source, PythonLexer(), _formatter)
    return templates.TemplateResponse(request, "candidate.html", dict(
        d=detail, c=detail.candidate, code=code, pygments_css=PYGMENTS_CSS))
