"""RMSNorm over the last dimension (Llama, Mistral, Qwen): a memory-bound row reduction."""
import torch
import torch.nn.functional as F

from baselines.task import Task, dtype_size, generator, randn, register

EPS = 1e-6


def reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    # torch's rms_norm computes in fp32 for bf16/fp16 and rounds once.
    return F.rms_norm(x, (x.shape[-1],), weight, EPS)


def make_inputs(shape, dtype, seed, device):
    gen = generator(seed, device)
    x = randn((shape["M"], shape["N"]), dtype, gen, scale=2.0)
    weight = randn((shape["N"],), dtype, gen, scale=0.1, shift=1.0)  # trained norms stay near 1
    return x, weight


RMS_NORM_FORBIDDEN = ("torch.nn.functional.rms_norm", "torch.rms_norm", "torch.nn.RMSNorm",
                      "torch.ops.aten.rms_norm", "torch.ops.aten._fused_rms_norm")

TASK = register(Task(
    name="rmsnorm",
    description=(
        "RMSNorm over the last dimension, as in Llama: x has shape (M, N) (M tokens, hidden size N), "
        "weight has shape (N,), both contiguous and of the same dtype. "
        "y[i, j] = x[i, j] / sqrt(mean_k(x[i, k]^2) + 1e-6) * weight[j]. "
        "Accumulate in fp32; return y of shape (M, N) in x's dtype, rounded once at the end."
    ),
    signature="entry(x: Tensor[M, N], weight: Tensor[N]) -> Tensor[M, N]",
    reference=reference,
    make_inputs=make_inputs,
    shapes=[{"M": 16384, "N": 8192}, {"M": 32768, "N": 4096}, {"M": 8192, "N": 5120}],
    check_shapes=[{"M": 1, "N": 1}, {"M": 37, "N": 1000}, {"M": 129, "N": 4097}, {"M": 3, "N": 12288}],
    small_shapes=[{"M": 3, "N": 17}, {"M": 5, "N": 130}],
    flops=lambda s: 4.0 * s["M"] * s["N"],  # square, add, scale, weight
    bytes=lambda s, dt: (2.0 * s["M"] * s["N"] + s["N"]) * dtype_size(dt),
    seed="kernels.rmsnorm",
    forbidden=RMS_NORM_FORBIDDEN,
))
