"""GEMM with a fused bias + GELU epilogue (the up-projection of a GPT/BERT/Falcon MLP)."""
import math

import torch
import torch.nn.functional as F

from baselines.task import Task, dtype_size, generator, randn, register


def reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # Eager PyTorch: one cuBLAS GEMM with the bias, then GELU as a second kernel.
    return F.gelu(torch.addmm(b, x, w))


def make_inputs(shape, dtype, seed, device):
    gen = generator(seed, device)
    M, K, N = shape["M"], shape["K"], shape["N"]
    x = randn((M, K), dtype, gen)
    w = randn((K, N), dtype, gen, scale=1.0 / math.sqrt(K))  # keeps x @ w near unit variance, like a trained layer
    b = randn((N,), dtype, gen, scale=0.1)
    return x, w, b


TASK = register(Task(
    name="matmul_bias_gelu",
    description=(
        "Fused linear layer + GELU: x has shape (M, K), w has shape (K, N) (row-major, already "
        "transposed), b has shape (N,), all contiguous and of the same dtype. "
        "y = gelu(x @ w + b) with the exact GELU gelu(z) = 0.5 * z * (1 + erf(z / sqrt(2))). "
        "Accumulate the products in fp32 (for fp32 inputs: full fp32 products, no TF32 rounding "
        "of the operands: tl.dot(..., input_precision=\"ieee\")), apply bias and GELU to the fp32 "
        "accumulator, return y of shape (M, N) in the inputs' dtype. Write the GEMM yourself: "
        "library matmuls (torch.matmul, the @ operator, F.linear, addmm, cuBLAS) are not allowed."
    ),
    signature="entry(x: Tensor[M, K], w: Tensor[K, N], b: Tensor[N]) -> Tensor[M, N]",
    reference=reference,
    make_inputs=make_inputs,
    shapes=[{"M": 8192, "K": 4096, "N": 16384}, {"M": 4096, "K": 8192, "N": 32768}, {"M": 16384, "K": 2048, "N": 8192}],
    check_shapes=[{"M": 1, "K": 1, "N": 1}, {"M": 37, "K": 100, "N": 129}, {"M": 129, "K": 4097, "N": 65},
                  {"M": 1, "K": 4096, "N": 1000}],
    small_shapes=[{"M": 5, "K": 7, "N": 9}, {"M": 17, "K": 40, "N": 33}],
    flops=lambda s: 2.0 * s["M"] * s["N"] * s["K"] + 10.0 * s["M"] * s["N"],  # GEMM + bias and erf-GELU
    bytes=lambda s, dt: (s["M"] * s["K"] + s["K"] * s["N"] + s["N"] + s["M"] * s["N"]) * dtype_size(dt),
    seed="kernels.matmul_bias_gelu",
    # The point of the task is the GEMM with its epilogue in one kernel: the library GEMM
    # and the separate GELU are what eager already runs.
    forbidden=("torch.matmul", "torch.Tensor.matmul", "torch.Tensor.__matmul__", "torch.Tensor.__rmatmul__",
               "torch.mm", "torch.Tensor.mm", "torch.addmm", "torch.Tensor.addmm", "torch.bmm", "torch.baddbmm",
               "torch.nn.functional.linear", "torch.nn.Linear", "torch.einsum", "torch.tensordot", "torch.inner",
               "torch.mv", "torch.dot", "torch._scaled_mm",
               "torch.nn.functional.gelu", "torch.nn.GELU"),
))
