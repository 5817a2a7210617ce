"""The task format: one optimization problem, as the harness and the engine see it.

A task module in `baselines/` builds one `Task` and registers it. The reference is the
oracle (verification) and the eager baseline (timing); the seed is the first candidate
of every job, a candidate-format module in `kernels/` (see README.md, "Candidate format").
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

Shape = dict[str, int]
Inputs = tuple  # tensors and plain Python scalars, in the reference's argument order


@dataclass(frozen=True)
class Tolerance:
    """Elementwise `|out - ref| <= atol + rtol * |ref|` AND a whole-tensor relative error
    `||out - ref|| / ||ref|| <= rel`: the second catches all-zero or degenerate outputs
    that slip through a loose allclose at low precision."""

    atol: float
    rtol: float
    rel: float


DEFAULT_TOLERANCES = {
    torch.float32: Tolerance(1e-4, 1e-4, 1e-4),
    torch.float16: Tolerance(1e-2, 1e-2, 5e-3),
    torch.bfloat16: Tolerance(2e-2, 2e-2, 1e-2),
}


@dataclass(frozen=True)
class Task:
    name: str
    description: str  # the LLM's task context: what to compute, in plain words and math
    signature: str  # e.g. "entry(x: Tensor[M, N]) -> Tensor[M, N]"
    reference: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]]
    make_inputs: Callable[[Shape, torch.dtype, int, torch.device | str], Inputs]
    shapes: Sequence[Shape]  # benchmark shapes: realistic LLM sizes, GPU only
    check_shapes: Sequence[Shape]  # odd sizes (non-multiples of block sizes), GPU verification
    small_shapes: Sequence[Shape]  # tiny sizes for the CPU interpreter (TRITON_INTERPRET=1)
    flops: Callable[[Shape], float]
    bytes: Callable[[Shape, torch.dtype], float]  # fewest bytes any implementation must move
    seed: str  # dotted module path of the seed kernel, e.g. "kernels.softmax"
    forbidden: tuple[str, ...] = ()  # dotted names a candidate must not call, e.g. "torch.softmax"
    dtypes: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float32)
    tolerances: dict[torch.dtype, Tolerance] = field(default_factory=lambda: dict(DEFAULT_TOLERANCES))
    writes_inputs: tuple[int, ...] = ()  # argument indices the op is documented to write in place
    peers: dict[str, Callable[..., object]] = field(default_factory=dict)  # name -> callable(*inputs), timed beside eager

    def tolerance(self, dtype: torch.dtype) -> Tolerance:
        return self.tolerances[dtype]

    def shape_key(self, shape: Shape) -> str:
        return "x".join(f"{k}{v}" for k, v in shape.items())

    def arithmetic_intensity(self, shape: Shape, dtype: torch.dtype) -> float:
        return self.flops(shape) / max(self.bytes(shape, dtype), 1.0)


def dtype_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def generator(seed: int, device) -> torch.Generator:
    """Draw on the device itself: benchmark inputs are hundreds of MB, too slow to make on the host."""
    return torch.Generator(device=device).manual_seed(seed)


def randn(shape: Sequence[int], dtype: torch.dtype, gen: torch.Generator, scale: float = 1.0, shift: float = 0.0):
    """Gaussian inputs, drawn in fp32 then cast; never zeros."""
    t = torch.randn(*shape, generator=gen, dtype=torch.float32, device=gen.device)
    return (t * scale + shift).to(dtype)


def upcast(t: torch.Tensor) -> torch.Tensor:
    """fp32 math for bf16/fp16/fp32 inputs; float64 stays float64, so a reference called on
    float64 inputs is a float64 golden."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


_REGISTRY: dict[str, Task] = {}


def register(task: Task) -> Task:
    if task.name in _REGISTRY:
        raise ValueError(f"task {task.name!r} registered twice")
    _REGISTRY[task.name] = task
    return task


def registry() -> dict[str, Task]:
    return _REGISTRY


def prod(xs) -> int:
    return math.prod(xs)
