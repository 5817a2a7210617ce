"""The service's state. Everything a job needs to resume lives here, so any process may die.

Candidate is the code artifact, unique per (task, harness_version, content_hash): the same
source proposed twice, by one job or by two, is stored and evaluated once. JobCandidate
records that a job proposed it (generation, operator, parents, the LLM call), which is
the job's population and the candidate's lineage.
"""
from __future__ import annotations

import enum
from datetime import datetime, timezone

from sqlalchemy import (JSON, DateTime, Float, ForeignKey, Index, Integer, TypeDecorator,
                        MetaData, String, Text, UniqueConstraint)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Stable constraint names, so Alembic migrations work the same on SQLite (batch mode) and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSONType = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC times on every backend: SQLite keeps no zone and hands times back
    naive, PostgreSQL's timestamptz keeps it; callers always get aware UTC datetimes."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return value.astimezone(timezone.utc) if value is not None and value.tzinfo else value

    def process_result_value(self, value, dialect):
        return value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict: JSONType, list: JSONType, datetime: UTCDateTime()}


class JobState(str, enum.Enum):
    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"
    cancelled = "cancelled"


class Verdict(str, enum.Enum):
    pending = "pending"  # row claimed, evaluation not finished (attempts says how often started)
    compile_error = "compile_error"
    runtime_error = "runtime_error"
    timeout = "timeout"
    incorrect = "incorrect"
    rejected = "rejected"  # anti-cheat
    correct = "correct"


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    task: Mapped[str] = mapped_column(String(64), index=True)
    strategy: Mapped[str] = mapped_column(String(64))
    language: Mapped[str] = mapped_column(String(16), default="triton")  # triton | cuda | both
    budget: Mapped[int] = mapped_column(Integer)  # LLM calls (for `tune`: candidates proposed)
    llm_model: Mapped[str | None] = mapped_column(String(200))
    llm_endpoint: Mapped[str | None] = mapped_column(String(500))
    config: Mapped[dict] = mapped_column(default=dict)  # population size, samplers, seed, temperature...
    state: Mapped[str] = mapped_column(String(16), default=JobState.queued.value, index=True)
    generation: Mapped[int] = mapped_column(Integer, default=0)
    calls_used: Mapped[int] = mapped_column(Integer, default=0)
    best_candidate_id: Mapped[int | None] = mapped_column(ForeignKey("candidates.id", use_alter=True))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    finished_at: Mapped[datetime | None]

    members: Mapped[list[JobCandidate]] = relationship(back_populates="job", order_by="JobCandidate.id")


class Candidate(Base):
    __tablename__ = "candidates"
    __table_args__ = (UniqueConstraint("task", "harness_version", "content_hash"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    task: Mapped[str] = mapped_column(String(64), index=True)
    language: Mapped[str] = mapped_column(String(16))  # triton | cuda
    source: Mapped[str] = mapped_column(Text)
    content_hash: Mapped[str] = mapped_column(String(64))  # sha256(normalized source + task + harness version)
    harness_version: Mapped[str] = mapped_column(String(32))
    name: Mapped[str | None] = mapped_column(String(200))  # the LLM's short name for the idea
    thought: Mapped[str | None] = mapped_column(Text)  # the rationale the reply gave (I3 insight)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    evaluations: Mapped[list[Evaluation]] = relationship(back_populates="candidate")


class JobCandidate(Base):
    __tablename__ = "job_candidates"
    __table_args__ = (UniqueConstraint("job_id", "candidate_id"), Index("ix_job_candidates_job_generation", "job_id", "generation"))

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    candidate_id: Mapped[int] = mapped_column(ForeignKey("candidates.id"), index=True)
    generation: Mapped[int] = mapped_column(Integer)
    operator: Mapped[str] = mapped_column(String(64))  # seed, tune, mutation, crossover, e1, m2, ...
    parent_ids: Mapped[list] = mapped_column(default=list)  # candidate ids
    llm_call_id: Mapped[int | None] = mapped_column(ForeignKey("llm_calls.id"))
    island: Mapped[int | None] = mapped_column(Integer)  # funsearch
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship(back_populates="members")
    candidate: Mapped[Candidate] = relationship()


class Evaluation(Base):
    """One verdict per candidate per device kind; a redelivered task finds and fills the same row."""

    __tablename__ = "evaluations"
    __table_args__ = (UniqueConstraint("candidate_id", "device"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    candidate_id: Mapped[int] = mapped_column(ForeignKey("candidates.id", ondelete="CASCADE"), index=True)
    device: Mapped[str] = mapped_column(String(128))  # GPU name, or "cpu-interpreter"
    status: Mapped[str] = mapped_column(String(16), default=Verdict.pending.value, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)  # written for the LLM to act on
    timings: Mapped[list] = mapped_column(default=list)  # per shape: median, spread, n, peers, speedups, sol
    speedup_eager: Mapped[float | None] = mapped_column(Float)  # geometric mean over benchmark shapes
    speedup_compile: Mapped[float | None] = mapped_column(Float)
    speedup_seed: Mapped[float | None] = mapped_column(Float)
    sol_fraction: Mapped[float | None] = mapped_column(Float)  # of the speed-of-light bound
    runtime_ms: Mapped[float | None] = mapped_column(Float)  # geometric mean of medians: the fitness
    environment: Mapped[dict] = mapped_column(default=dict)  # driver, torch, triton, cuda, harness version
    phases: Mapped[dict] = mapped_column(default=dict)  # seconds spent in start/compile/verify/time
    worker: Mapped[str | None] = mapped_column(String(200))
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    candidate: Mapped[Candidate] = relationship(back_populates="evaluations")


class LLMCall(Base):
    __tablename__ = "llm_calls"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    endpoint: Mapped[str] = mapped_column(String(500))
    model: Mapped[str] = mapped_column(String(200))
    request_hash: Mapped[str] = mapped_column(String(64), index=True)  # reply-cache key
    prompt: Mapped[list] = mapped_column()  # the chat messages sent
    reply: Mapped[str | None] = mapped_column(Text)
    # Why this call gave the job no candidate: the call failed (no reply), or the orchestrator
    # found no usable code in the reply (no code block, cut off, wrong signature).
    error: Mapped[str | None] = mapped_column(Text)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    latency_s: Mapped[float | None] = mapped_column(Float)
    cost_usd: Mapped[float | None] = mapped_column(Float)
    cached: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# runtime_ms and candidate_id too: the leaderboard reads the fastest correct verdicts per device from the index alone.
Index("ix_evaluations_status_device", Evaluation.status, Evaluation.device, Evaluation.runtime_ms, Evaluation.candidate_id)
