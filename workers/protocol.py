"""The contract between the evaluation harness and everything above it (service, engine, web).

`EvalResult` is what one evaluation of one candidate produces; it is JSON-serializable so it
crosses the evaluation process's pipe, Celery, and the database unchanged.
"""
from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import BaseModel, Field

# Bump when verification or timing rules change: results of different versions are not comparable.
HARNESS_VERSION = "1"

Status = Literal["compile_error", "runtime_error", "timeout", "incorrect", "rejected", "correct"]
Language = Literal["triton", "cuda"]
CPU_DEVICE = "cpu-interpreter"


class ShapeTiming(BaseModel):
    shape: dict[str, int]
    dtype: str
    median_ms: float
    spread: float  # (p80 - p20) / median over the trials
    n: int
    wall_ms: float  # host wall time per call, the cross-check against events
    eager_ms: float | None = None
    compile_ms: float | None = None  # torch.compile of the reference
    seed_ms: float | None = None
    peers_ms: dict[str, float] = Field(default_factory=dict)  # the task's other peers
    speedup_eager: float | None = None
    speedup_compile: float | None = None
    speedup_seed: float | None = None
    sol_ms: float | None = None  # the speed-of-light time from the task's FLOP and byte counts
    sol_fraction: float | None = None  # sol_ms / median_ms


class EvalResult(BaseModel):
    status: Status
    error: str | None = None  # written for an LLM to act on
    device: str  # GPU name, or CPU_DEVICE
    environment: dict[str, str] = Field(default_factory=dict)
    timings: list[ShapeTiming] = Field(default_factory=list)
    runtime_ms: float | None = None  # geometric mean of the medians: the fitness, lower is better
    speedup_eager: float | None = None  # geometric means over shapes
    speedup_compile: float | None = None
    speedup_seed: float | None = None
    sol_fraction: float | None = None
    phases: dict[str, float] = Field(default_factory=dict)  # seconds: start, compile, verify, baselines, time
    # True when the candidate was only compiled (CUDA without a GPU: nvcc -arch=sm_90): never
    # verified, never timed, so never "correct".
    compile_only: bool = False
    harness_version: str = HARNESS_VERSION


def normalize_source(source: str) -> str:
    """Whitespace-insensitive at line ends and file ends, so trivial reformatting dedups."""
    return "\n".join(line.rstrip() for line in source.strip().splitlines())


def content_hash(source: str, task: str, harness_version: str = HARNESS_VERSION) -> str:
    payload = f"{task}\0{harness_version}\0{normalize_source(source)}"
    return hashlib.sha256(payload.encode()).hexdigest()
