"""Greedy decoding: argmax over a large vocabulary, one index per row of logits."""
import torch

from baselines.task import Task, Tolerance, dtype_size, generator, randn, register

PLANTED_MAX = 20.0  # above any drawn logit (std 3), exact in every dtype


def reference(logits: torch.Tensor) -> torch.Tensor:
    return torch.argmax(logits, dim=-1)  # first (lowest) index among equal maxima


def make_inputs(shape, dtype, seed, device):
    gen = generator(seed, device)
    N, V = shape["N"], shape["V"]
    logits = randn((N, V), dtype, gen, scale=3.0)
    # Every other row gets its maximum twice, at two random columns, so the tie rule is
    # checked on every call rather than by the luck of bf16 rounding.
    rows = torch.arange(0, N, 2, device=gen.device)
    cols = torch.randint(0, V, (rows.numel(), 2), generator=gen, device=gen.device)
    logits[rows[:, None], cols] = PLANTED_MAX
    return (logits,)


_EXACT = Tolerance(0.0, 0.0, 0.0)

TASK = register(Task(
    name="argmax",
    description=(
        "Argmax over the last dimension (greedy sampling over the vocabulary): logits has shape "
        "(N, V), contiguous, no NaN. Return an int64 tensor of shape (N,) holding, for each row, "
        "the index of its largest value; when several entries equal the maximum, the lowest "
        "index (as torch.argmax). Exact match required. N is small (a decode batch) and V is "
        "large, so one program per row leaves most of the GPU idle."
    ),
    signature="entry(logits: Tensor[N, V]) -> Tensor[N] int64",
    reference=reference,
    make_inputs=make_inputs,
    shapes=[{"N": 64, "V": 128256}, {"N": 1024, "V": 128256}, {"N": 4096, "V": 151936}],
    check_shapes=[{"N": 1, "V": 1}, {"N": 2, "V": 3}, {"N": 37, "V": 1000}, {"N": 129, "V": 32001},
                  {"N": 3, "V": 151936}],
    small_shapes=[{"N": 4, "V": 17}, {"N": 5, "V": 130}],
    flops=lambda s: 1.0 * s["N"] * s["V"],  # one comparison per logit
    bytes=lambda s, dt: s["N"] * s["V"] * dtype_size(dt) + 8.0 * s["N"],
    seed="kernels.argmax",
    forbidden=("torch.argmax", "torch.Tensor.argmax", "torch.max", "torch.Tensor.max", "torch.topk",
               "torch.Tensor.topk", "torch.sort", "torch.Tensor.sort", "torch.argsort", "torch.Tensor.argsort",
               "torch.kthvalue", "torch.Tensor.kthvalue", "torch.mode", "torch.Tensor.mode",
               "torch.msort", "torch.ops.aten.argmax", "torch.ops.aten.max"),
    tolerances={torch.float32: _EXACT, torch.float16: _EXACT, torch.bfloat16: _EXACT},
))
