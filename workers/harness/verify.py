"""Correctness: compare a candidate's outputs with the reference's, in float64, with the
task's tolerance (elementwise atol/rtol AND a whole-tensor relative error), NaN/Inf never
passing, shape/dtype/device matching exactly; and the checks around each call (inputs
left untouched, fresh outputs, candidate-first and reference-first)."""
from __future__ import annotations

import math

import torch

from baselines.task import Task, Tolerance


class DegenerateReference(Exception):
    """The reference itself produced NaN/Inf: a problem of the task, not of the candidate."""


def as_tuple(x) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def tensors(inputs) -> list[torch.Tensor]:
    return [t for t in inputs if isinstance(t, torch.Tensor)]


def clone_inputs(inputs) -> tuple:
    return tuple(t.clone() if isinstance(t, torch.Tensor) else t for t in inputs)


def tolerance_for(task: Task, dtype: torch.dtype) -> Tolerance:
    if dtype in task.tolerances:
        return task.tolerance(dtype)
    # The CPU interpreter runs fp16 where the task was written for bf16: bf16's looser bound holds.
    if dtype == torch.float16 and torch.bfloat16 in task.tolerances:
        return task.tolerance(torch.bfloat16)
    raise KeyError(f"task {task.name} has no tolerance for {dtype}")


def _fmt(v: float) -> str:
    return f"{v:.6g}"


def compare(got, expected, tol: Tolerance) -> str | None:
    """None when `got` matches `expected`, else one paragraph for the LLM."""
    got_items, exp_items = as_tuple(got), as_tuple(expected)
    if len(got_items) != len(exp_items):
        return f"returned {len(got_items)} output(s), expected {len(exp_items)}"
    for i, (g, e) in enumerate(zip(got_items, exp_items)):
        which = f"output {i}" if len(exp_items) > 1 else "the output"
        if not isinstance(g, torch.Tensor):
            return f"{which} is a {type(g).__name__}, expected a torch.Tensor"
        if g.shape != e.shape:
            return f"{which} has shape {tuple(g.shape)}, expected {tuple(e.shape)}"
        if g.dtype != e.dtype:
            return f"{which} has dtype {g.dtype}, expected {e.dtype}"
        if g.device != e.device:
            return f"{which} is on {g.device}, expected {e.device}"
        message = _compare_values(g, e, tol)
        if message:
            return f"{which}: {message}"
    return None


def _first_index(mask: torch.Tensor) -> tuple[int, ...]:
    flat = int(mask.reshape(-1).nonzero()[0, 0])
    return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), mask.shape)) if mask.dim() else ()


def _compare_values(g: torch.Tensor, e: torch.Tensor, tol: Tolerance) -> str | None:
    if g.numel() == 0:
        return None
    if not (e.is_floating_point() or e.is_complex()):
        bad = g != e
        if bad.any():
            idx = _first_index(bad)
            return (f"{int(bad.sum())} of {e.numel()} elements differ (exact match required); first at index "
                    f"{list(idx)}: got {g[idx].item()}, expected {e[idx].item()}")
        return None
    g64, e64 = g.detach().to(torch.float64), e.detach().to(torch.float64)
    if not torch.isfinite(e64).all():
        raise DegenerateReference("the reference output contains NaN/Inf")
    nonfinite = ~torch.isfinite(g64)
    diff = (g64 - e64).abs()
    bad = (diff > tol.atol + tol.rtol * e64.abs()) | nonfinite
    ref_norm = float(torch.linalg.vector_norm(e64))
    rel = math.inf if nonfinite.any() else float(torch.linalg.vector_norm(g64 - e64)) / max(ref_norm, 1e-30)
    finite_diff = torch.where(nonfinite, torch.zeros_like(diff), diff)
    max_abs = float(finite_diff.max())
    stats = (f"max abs error {_fmt(max_abs)}, relative error ||out-ref||/||ref|| {_fmt(rel)} "
             f"(allowed: |out-ref| <= {tol.atol:g} + {tol.rtol:g}*|ref| elementwise, relative {tol.rel:g})")
    if bad.any():
        idx = _first_index(bad)
        nan_note = f"; {int(nonfinite.sum())} elements are NaN/Inf" if nonfinite.any() else ""
        return (f"{int(bad.sum())} of {e.numel()} elements out of tolerance{nan_note}; first at index {list(idx)}: "
                f"got {_fmt(g64[idx].item())}, expected {_fmt(e64[idx].item())}; {stats}")
    if rel > tol.rel:
        return f"relative error too large; {stats}"
    return None


def poison_cuda_cache(sizes: list[int], device: torch.device) -> None:
    """Fill freed blocks of the caching allocator with NaN bytes (0xFF), so an output the
    candidate leaves unwritten (torch.empty) cannot happen to hold a stale correct result."""
    blocks = [torch.full((n,), 0xFF, dtype=torch.uint8, device=device) for n in sizes if n > 0]
    del blocks


def inputs_unchanged(inputs, snapshot, allowed: tuple[int, ...] = ()) -> str | None:
    """Bitwise comparison (NaN-safe) of every tensor argument with its copy from before the call."""
    for i, (a, b) in enumerate(zip(inputs, snapshot)):
        if i in allowed or not isinstance(a, torch.Tensor):
            continue
        if a.shape != b.shape or not torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)):
            return f"entry wrote into its input argument {i}; inputs are read-only (allocate the output)"
    return None


def bytes_of(outputs) -> list[int]:
    return [t.numel() * t.element_size() for t in as_tuple(outputs) if isinstance(t, torch.Tensor)]
