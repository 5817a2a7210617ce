"""Solution guiding: what information a prompt carries, as plain data for the templates.

I1 task context: the task (description, signature, shapes, dtypes, forbidden ops, the
   PyTorch reference), the device, and one kernel to start from with its measurements
   (the current best, or the baseline for EoH).
I2 historical solutions: earlier candidates with their names (the approach), status,
   runtimes and code.
I3 optimization insights: the thoughts earlier replies gave, sampled from the population
   detached from their code, and the evaluator's feedback: compiler errors, mismatch
   reports and achieved fraction of the speed-of-light bound.
"""
from __future__ import annotations

import inspect
import random
import textwrap
from dataclasses import dataclass
from functools import lru_cache

from baselines import get_task
from evo.strategies.base import JobInfo, Member
from workers.protocol import CPU_DEVICE

I1, I2, I3 = "I1", "I2", "I3"
INSIGHTS_SAMPLED = 3  # thoughts per prompt, as in the paper
ERROR_CHARS = 1500  # of one error message in a prompt: enough for the first compiler error


@dataclass(frozen=True)
class MemberView:
    """A member as the templates show it."""

    id: int
    name: str
    status: str
    runtime_ms: float | None
    speedup_eager: float | None
    sol_fraction: float | None
    source: str
    language: str
    error: str | None
    thought: str | None
    timings: tuple[str, ...]  # one line per benchmark shape

    @property
    def valid(self) -> bool:
        return self.status == "correct" and self.runtime_ms is not None


def view(m: Member) -> MemberView:
    return MemberView(id=m.candidate_id, name=m.name or ("seed kernel" if m.operator == "seed" else f"candidate {m.candidate_id}"),
                      status=m.status, runtime_ms=m.runtime_ms, speedup_eager=m.speedup_eager,
                      sol_fraction=m.sol_fraction, source=(m.source or "").strip("\n"), language=m.language,
                      error=_clip(m.error), thought=m.thought, timings=tuple(timing_line(t) for t in m.timings))


def timing_line(t: dict) -> str:
    shape = " ".join(f"{k}={v}" for k, v in (t.get("shape") or {}).items())
    parts = [f"{shape} {t.get('dtype', '')}".strip() + f": {t['median_ms']:.4g} ms" if t.get("median_ms") is not None
             else shape]
    if t.get("speedup_eager") is not None:
        parts.append(f"{t['speedup_eager']:.3g}x vs PyTorch eager")
    if t.get("sol_fraction") is not None:
        parts.append(f"{100 * t['sol_fraction']:.0f}% of the speed-of-light bound")
    return ", ".join(parts)


def task_context(job: JobInfo) -> dict:
    """The stable part of I1: identical for every prompt of a job."""
    task = get_task(job.task)
    reference = reference_source(job.task)
    shapes = [" ".join(f"{k}={v}" for k, v in s.items()) for s in task.shapes]
    return {"name": task.name, "description": task.description, "signature": task.signature,
            "shapes": shapes, "dtypes": [str(d).removeprefix("torch.") for d in task.dtypes],
            "forbidden": list(task.forbidden), "reference": reference, "device": device_words(job.device)}


@lru_cache(maxsize=None)
def reference_source(task_name: str) -> str | None:
    try:
        return textwrap.dedent(inspect.getsource(get_task(task_name).reference)).strip("\n")
    except (OSError, TypeError):  # defined somewhere without source (a lambda in a REPL)
        return None


def device_words(device: str) -> str:
    if not device:
        return "an NVIDIA GPU"
    if device == CPU_DEVICE:  # CI or a laptop: the kernel is still meant for a GPU
        return "an NVIDIA GPU (this run checks candidates on Triton's CPU interpreter)"
    return device


def best_of(history: list[Member]) -> Member | None:
    valid = [m for m in history if m.valid]
    return min(valid, key=lambda m: (m.runtime_ms, m.candidate_id)) if valid else None


def seed_of(history: list[Member]) -> Member | None:
    return next((m for m in history if m.operator == "seed"), None)


def insights(history: list[Member], rng: random.Random, k: int = INSIGHTS_SAMPLED) -> list[str]:
    """Up to k thoughts sampled from the population, detached from their code."""
    thoughts = sorted({m.thought.strip() for m in history if m.thought and m.thought.strip()})
    return rng.sample(thoughts, min(k, len(thoughts)))


def feedback(history: list[Member], best: Member | None, unusable_replies: tuple[str, ...] = ()) -> dict:
    """The evaluator's word: the latest failures' errors, why the latest replies gave no
    candidate, and how far the best is from the bound."""
    last_gen = max((m.generation for m in history), default=0)
    failures = [view(m) for m in history if m.generation == last_gen and not m.valid and m.error]
    return {"failures": failures[:4], "unusable": [_clip(e) for e in unusable_replies[:4]],
            "best": view(best) if best else None}


def _clip(text: str | None) -> str | None:
    if text is None or len(text) <= ERROR_CHARS:
        return text
    return text[:ERROR_CHARS] + f"\n... ({len(text) - ERROR_CHARS} more characters)"
