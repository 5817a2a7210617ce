"""What a search strategy sees and returns. The orchestrator (evo/orchestrate.py) owns the
loop and the DB; a strategy is a pure decision: given the job's history, propose the next
generation's candidates. It keeps no state of its own, so a resumed job decides the same.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Member:
    """One evaluated (or failed) candidate of a job, as the population managers see it."""

    candidate_id: int
    source: str
    language: str
    generation: int
    operator: str
    parent_ids: tuple[int, ...]
    status: str  # a Verdict value; "correct" is the only valid one
    runtime_ms: float | None  # fitness: lower is better; None unless correct
    error: str | None = None
    name: str | None = None
    thought: str | None = None
    speedup_eager: float | None = None
    sol_fraction: float | None = None
    timings: tuple[dict, ...] = ()
    island: int | None = None

    @property
    def valid(self) -> bool:
        return self.status == "correct" and self.runtime_ms is not None


@dataclass(frozen=True)
class JobInfo:
    id: int
    task: str
    strategy: str
    language: str  # triton | cuda | both
    budget: int
    calls_used: int
    generation: int  # the generation about to be proposed
    config: dict = field(default_factory=dict)
    device: str = ""  # where candidates are evaluated: GPU name or cpu-interpreter
    unusable_replies: tuple[str, ...] = ()  # why the latest LLM replies gave no candidate (for I3 feedback)


@dataclass
class Proposal:
    """A new candidate to evaluate. `source` None means the LLM reply had no usable code:
    it is recorded (it used budget) but not evaluated."""

    source: str | None
    language: str
    operator: str
    parent_ids: tuple[int, ...] = ()
    name: str | None = None
    thought: str | None = None
    llm_call_id: int | None = None
    island: int | None = None
    error: str | None = None


class Strategy(Protocol):
    name: str
    uses_llm: bool

    def propose(self, job: JobInfo, history: list[Member], rng: random.Random, llm) -> list[Proposal]:
        """The next generation's proposals; [] when the strategy has nothing more to try."""
        ...
