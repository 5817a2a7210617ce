"""softmax over the last dimension: the classic memory-bound row reduction."""
import torch

from baselines.task import Task, dtype_size, generator, randn, register


def reference(x: torch.Tensor) -> torch.Tensor:
    # torch's softmax accumulates in fp32 for bf16/fp16 and rounds once: a precise oracle
    # and the eager call users write (an explicit .float() copy would slow eager down).
    return torch.softmax(x, dim=-1)


def make_inputs(shape, dtype, seed, device):
    return (randn((shape["M"], shape["N"]), dtype, generator(seed, device), scale=3.0),)


TASK = register(Task(
    name="softmax",
    description=(
        "Row-wise softmax over the last dimension of a 2-D tensor x of shape (M, N): "
        "y[i, j] = exp(x[i, j] - max_k x[i, k]) / sum_k exp(x[i, k] - max_k x[i, k]). "
        "Accumulate in fp32; return y in x's dtype."
    ),
    signature="entry(x: Tensor[M, N]) -> Tensor[M, N]",
    reference=reference,
    make_inputs=make_inputs,
    shapes=[{"M": 8192, "N": 4096}, {"M": 4096, "N": 32768}, {"M": 1024, "N": 131072}],
    check_shapes=[{"M": 1, "N": 1}, {"M": 37, "N": 1000}, {"M": 129, "N": 4097}],
    small_shapes=[{"M": 3, "N": 17}, {"M": 5, "N": 130}],
    flops=lambda s: 5.0 * s["M"] * s["N"],
    bytes=lambda s, dt: 2.0 * s["M"] * s["N"] * dtype_size(dt),
    seed="kernels.softmax",
    forbidden=("torch.softmax", "torch.nn.functional.softmax", "torch.Tensor.softmax",
               "torch.log_softmax", "torch.nn.functional.log_softmax", "torch.special.softmax"),
))
