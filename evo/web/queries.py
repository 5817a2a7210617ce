"""Reads only the web needs: a job's population, a candidate's detail and lineage, counts
for pagination. The leaderboard, job progress and per-generation curve are shared with the
CLI and live in evo/leaderboard.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import Candidate, Evaluation, Job, JobCandidate, LLMCall

LINEAGE_DEPTH = 4  # ancestor levels shown; deeper lineages are cut with a "…" marker
MAX_JOBS = 20  # jobs shown per candidate, the latest ones


def count_jobs(session: Session, state: str | None = None, task: str | None = None) -> int:
    """The total behind evo.leaderboard.list_jobs' page, for pagination."""
    query = select(func.count()).select_from(Job)
    if state:
        query = query.where(Job.state == state)
    if task:
        query = query.where(Job.task == task)
    return session.scalar(query)


@dataclass
class PopulationRow:
    candidate_id: int
    generation: int
    operator: str
    parent_ids: list[int]
    name: str | None
    language: str
    status: str | None  # None: not evaluated yet
    device: str | None
    runtime_ms: float | None
    speedup_eager: float | None
    error: str | None


def population(session: Session, job_id: int, limit: int, offset: int) -> tuple[list[PopulationRow], int]:
    """The candidates a job proposed, by generation, each with its evaluation(s)."""
    total = session.scalar(select(func.count()).select_from(JobCandidate).where(JobCandidate.job_id == job_id))
    rows = session.execute(
        select(JobCandidate, Candidate.name, Candidate.language, Evaluation)
        .join(Candidate, Candidate.id == JobCandidate.candidate_id)
        .outerjoin(Evaluation, Evaluation.candidate_id == JobCandidate.candidate_id)
        .where(JobCandidate.job_id == job_id)
        .order_by(JobCandidate.generation, JobCandidate.id)
        .limit(limit).offset(offset)
    ).all()
    return [PopulationRow(
        candidate_id=member.candidate_id, generation=member.generation, operator=member.operator,
        parent_ids=list(member.parent_ids or []), name=name, language=language,
        status=ev.status if ev else None, device=ev.device if ev else None,
        runtime_ms=ev.runtime_ms if ev else None, speedup_eager=ev.speedup_eager if ev else None,
        error=ev.error if ev else None,
    ) for member, name, language, ev in rows], total


@dataclass
class LineageNode:
    candidate_id: int
    name: str | None
    operator: str | None
    status: str | None
    speedup_eager: float | None
    parents: list[LineageNode] = field(default_factory=list)  # filled for ancestors, up to LINEAGE_DEPTH
    truncated: bool = False  # deeper levels exist but are not shown


@dataclass
class Membership:
    job: Job
    member: JobCandidate
    llm_call: LLMCall | None


@dataclass
class CandidateDetail:
    candidate: Candidate
    evaluations: list[Evaluation]
    memberships: list[Membership]  # the latest MAX_JOBS
    job_count: int  # all jobs that proposed it
    ancestors: list[LineageNode]  # the parents, each holding its own parents
    children: list[LineageNode]


def _verdicts(session: Session, ids: set[int]) -> dict[int, tuple[str | None, str | None, float | None]]:
    """id -> (name, best status, best speedup), over all devices."""
    if not ids:
        return {}
    out: dict[int, tuple[str | None, str | None, float | None]] = {}
    for cid, name, status, speedup in session.execute(
        select(Candidate.id, Candidate.name, Evaluation.status, Evaluation.speedup_eager)
        .outerjoin(Evaluation, Evaluation.candidate_id == Candidate.id).where(Candidate.id.in_(ids))
    ):
        _, old_status, old_speedup = out.get(cid, (None, None, None))
        if old_status == "correct" and (speedup is None or (old_speedup or 0) >= speedup):
            continue
        out[cid] = (name, status, speedup)
    return out


def candidate_detail(session: Session, candidate_id: int) -> CandidateDetail | None:
    candidate = session.get(Candidate, candidate_id)
    if candidate is None:
        return None
    evaluations = session.scalars(select(Evaluation).where(Evaluation.candidate_id == candidate_id)
                                  .order_by(Evaluation.id)).all()
    # A seed is a member of every job of its task: show (and search for lineage) the latest few.
    memberships = [Membership(job, member, call) for member, job, call in session.execute(
        select(JobCandidate, Job, LLMCall).join(Job, Job.id == JobCandidate.job_id)
        .outerjoin(LLMCall, LLMCall.id == JobCandidate.llm_call_id)
        .where(JobCandidate.candidate_id == candidate_id).order_by(JobCandidate.id.desc()).limit(MAX_JOBS)
    )][::-1]
    job_count = session.scalar(select(func.count()).select_from(JobCandidate)
                                .where(JobCandidate.candidate_id == candidate_id))
    # Lineage lives inside the jobs that proposed this candidate: their members' parent_ids.
    job_ids = {m.job.id for m in memberships}
    members = session.execute(
        select(JobCandidate.candidate_id, JobCandidate.parent_ids, JobCandidate.operator)
        .where(JobCandidate.job_id.in_(job_ids))
    ).all() if job_ids else []
    parents_of: dict[int, list[int]] = {}
    operator_of: dict[int, str] = {}
    children_ids: list[int] = []
    for cid, parent_ids, operator in members:
        parents_of.setdefault(cid, [])
        parents_of[cid] += [p for p in parent_ids or [] if p not in parents_of[cid]]
        operator_of.setdefault(cid, operator)
        if candidate_id in (parent_ids or []) and cid not in children_ids and cid != candidate_id:
            children_ids.append(cid)

    shown: set[int] = set(children_ids)
    frontier, levels = set(parents_of.get(candidate_id, [])), 0
    while frontier and levels < LINEAGE_DEPTH:
        shown |= frontier
        levels += 1
        frontier = {p for c in frontier for p in parents_of.get(c, [])} - shown
    info = _verdicts(session, shown)

    def leaf(cid: int) -> LineageNode:
        name, status, speedup = info.get(cid, (None, None, None))
        return LineageNode(cid, name, operator_of.get(cid), status, speedup)

    def with_parents(cid: int, depth: int, seen: frozenset[int]) -> LineageNode:
        n = leaf(cid)
        parents = [p for p in parents_of.get(cid, []) if p not in seen]  # `seen` guards against cycles
        if depth >= LINEAGE_DEPTH:
            n.truncated = bool(parents)
        else:
            n.parents = [with_parents(p, depth + 1, seen | {p}) for p in parents]
        return n

    ancestors = [with_parents(p, 1, frozenset({candidate_id, p})) for p in parents_of.get(candidate_id, [])]
    return CandidateDetail(candidate, list(evaluations), memberships, job_count, ancestors,
                           [leaf(c) for c in children_ids])

