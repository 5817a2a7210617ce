"""LayerNorm over the last dimension with weight and bias (GPT-2, BERT, Falcon, ViT)."""
import torch
import torch.nn.functional as F

from baselines.task import Task, dtype_size, generator, randn, register

EPS = 1e-5


def reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    # torch's layer_norm computes in fp32 for bf16/fp16 and rounds once.
    return F.layer_norm(x, (x.shape[-1],), weight, bias, EPS)


def make_inputs(shape, dtype, seed, device):
    gen = generator(seed, device)
    # A non-zero mean, so an implementation that skips the mean subtraction fails.
    x = randn((shape["M"], shape["N"]), dtype, gen, scale=2.0, shift=1.0)
    weight = randn((shape["N"],), dtype, gen, scale=0.1, shift=1.0)
    bias = randn((shape["N"],), dtype, gen, scale=0.1)
    return x, weight, bias


TASK = register(Task(
    name="layernorm",
    description=(
        "LayerNorm over the last dimension: x has shape (M, N), weight and bias shape (N,), all "
        "contiguous and of the same dtype. With mean[i] = mean_k x[i, k] and "
        "var[i] = mean_k (x[i, k] - mean[i])^2 (biased), "
        "y[i, j] = (x[i, j] - mean[i]) / sqrt(var[i] + 1e-5) * weight[j] + bias[j]. "
        "Accumulate in fp32; return y of shape (M, N) in x's dtype."
    ),
    signature="entry(x: Tensor[M, N], weight: Tensor[N], bias: Tensor[N]) -> Tensor[M, N]",
    reference=reference,
    make_inputs=make_inputs,
    shapes=[{"M": 16384, "N": 8192}, {"M": 32768, "N": 4096}, {"M": 8192, "N": 5120}],
    check_shapes=[{"M": 1, "N": 1}, {"M": 37, "N": 1000}, {"M": 129, "N": 4097}, {"M": 3, "N": 12288}],
    small_shapes=[{"M": 3, "N": 17}, {"M": 5, "N": 130}],
    flops=lambda s: 7.0 * s["M"] * s["N"],  # sum, subtract, square, add, scale, weight, bias
    bytes=lambda s, dt: (2.0 * s["M"] * s["N"] + 2.0 * s["N"]) * dtype_size(dt),
    seed="kernels.layernorm",
    forbidden=("torch.nn.functional.layer_norm", "torch.layer_norm", "torch.nn.LayerNorm",
               "torch.native_layer_norm", "torch.ops.aten.layer_norm", "torch.ops.aten.native_layer_norm",
               # both compute a layer norm when the row is viewed as one group / one instance
               "torch.nn.functional.group_norm", "torch.group_norm", "torch.nn.functional.instance_norm"),
))
