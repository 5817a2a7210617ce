"""SwiGLU activation of a gated MLP (Llama, Mistral, Qwen): silu(gate) * up, elementwise."""
import torch
import torch.nn.functional as F

from baselines.task import Task, dtype_size, generator, randn, register


def reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up  # what a Llama MLP runs in eager PyTorch


def make_inputs(shape, dtype, seed, device):
    gen = generator(seed, device)
    gate = randn((shape["M"], shape["N"]), dtype, gen, scale=2.0)
    up = randn((shape["M"], shape["N"]), dtype, gen)
    return gate, up


TASK = register(Task(
    name="swiglu",
    description=(
        "SwiGLU: gate and up have shape (M, N) (M tokens, N = MLP intermediate size), contiguous, "
        "same dtype. y[i, j] = silu(gate[i, j]) * up[i, j] with silu(g) = g / (1 + exp(-g)). "
        "Compute in fp32; return y of shape (M, N) in the inputs' dtype."
    ),
    signature="entry(gate: Tensor[M, N], up: Tensor[M, N]) -> Tensor[M, N]",
    reference=reference,
    make_inputs=make_inputs,
    # Intermediate sizes of Llama-3-8B (14336), Llama-3-70B (28672) and Llama-2-7B (11008).
    shapes=[{"M": 16384, "N": 14336}, {"M": 8192, "N": 28672}, {"M": 32768, "N": 11008}],
    check_shapes=[{"M": 1, "N": 1}, {"M": 37, "N": 1000}, {"M": 129, "N": 4097}],
    small_shapes=[{"M": 3, "N": 17}, {"M": 5, "N": 130}],
    flops=lambda s: 5.0 * s["M"] * s["N"],  # negate, exp, add, divide, multiply
    bytes=lambda s, dt: 3.0 * s["M"] * s["N"] * dtype_size(dt),
    seed="kernels.swiglu",
    forbidden=("torch.nn.functional.silu", "torch.nn.SiLU", "torch.ops.aten.silu"),
))
