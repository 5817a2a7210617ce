"""Residual add fused with RMSNorm (a transformer block's seam): returns the normalized
output and the updated residual stream."""
import torch
import torch.nn.functional as F

from baselines.rmsnorm import EPS, RMS_NORM_FORBIDDEN
from baselines.task import Task, dtype_size, generator, randn, register


def reference(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor):
    # Hugging Face order: the residual is summed (and rounded) in the model dtype, then normalized.
    new_residual = x + residual
    return F.rms_norm(new_residual, (x.shape[-1],), weight, EPS), new_residual


def make_inputs(shape, dtype, seed, device):
    gen = generator(seed, device)
    x = randn((shape["M"], shape["N"]), dtype, gen)
    residual = randn((shape["M"], shape["N"]), dtype, gen, scale=4.0)  # the residual stream grows with depth
    weight = randn((shape["N"],), dtype, gen, scale=0.1, shift=1.0)
    return x, residual, weight


TASK = register(Task(
    name="add_rmsnorm",
    description=(
        "Fused residual add + RMSNorm. x and residual have shape (M, N), weight has shape (N,), all "
        "contiguous and of the same dtype. h = x + residual, rounded to the inputs' dtype (this is "
        "the new residual stream); out[i, j] = h[i, j] / sqrt(mean_k(h[i, k]^2) + 1e-6) * weight[j], "
        "computed in fp32 and returned in the inputs' dtype. Return the tuple (out, h), two new "
        "tensors of shape (M, N); do not write x or residual."
    ),
    signature="entry(x: Tensor[M, N], residual: Tensor[M, N], weight: Tensor[N]) -> (Tensor[M, N], Tensor[M, N])",
    reference=reference,
    make_inputs=make_inputs,
    shapes=[{"M": 16384, "N": 8192}, {"M": 32768, "N": 4096}, {"M": 8192, "N": 5120}],
    check_shapes=[{"M": 1, "N": 1}, {"M": 37, "N": 1000}, {"M": 129, "N": 4097}, {"M": 3, "N": 12288}],
    small_shapes=[{"M": 3, "N": 17}, {"M": 5, "N": 130}],
    flops=lambda s: 5.0 * s["M"] * s["N"],  # add, square, add, scale, weight
    bytes=lambda s, dt: (4.0 * s["M"] * s["N"] + s["N"]) * dtype_size(dt),
    seed="kernels.add_rmsnorm",
    forbidden=RMS_NORM_FORBIDDEN,
))
