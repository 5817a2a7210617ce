"""Cross-entropy loss over a large vocabulary (the LM head's loss): one pass over N x V logits."""
import torch
import torch.nn.functional as F

from baselines.task import Task, Tolerance, dtype_size, generator, randn, register, upcast


def reference(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # Hugging Face causal LMs upcast the logits before the loss: fp32 math, fp32 loss.
    return F.cross_entropy(upcast(logits), targets)


def make_inputs(shape, dtype, seed, device):
    gen = generator(seed, device)
    logits = randn((shape["N"], shape["V"]), dtype, gen, scale=3.0)
    targets = torch.randint(0, shape["V"], (shape["N"],), generator=gen, device=gen.device, dtype=torch.int64)
    return logits, targets


# The loss is fp32 whatever the logits' dtype: every implementation reads the same values
# and must reduce them in fp32, so only the summation order differs.
_FP32_LOSS = Tolerance(1e-4, 1e-4, 1e-4)

TASK = register(Task(
    name="cross_entropy",
    description=(
        "Mean cross-entropy loss over a large vocabulary. logits has shape (N, V) (N tokens, V "
        "vocabulary entries, contiguous), targets has shape (N,), int64, every entry in [0, V) "
        "(no ignore index). loss = mean_i (logsumexp_j logits[i, j] - logits[i, targets[i]]). "
        "Compute in fp32 (logsumexp with the row max subtracted); return a 0-dim float32 tensor. "
        "N * V can exceed 2^31: use 64-bit offsets."
    ),
    signature="entry(logits: Tensor[N, V], targets: Tensor[N] int64) -> Tensor[] float32",
    reference=reference,
    make_inputs=make_inputs,
    # Vocabularies of Llama 3 (128256) and Qwen 2 (151936); the last shape has N * V > 2^31.
    shapes=[{"N": 8192, "V": 128256}, {"N": 4096, "V": 151936}, {"N": 16384, "V": 151936}],
    check_shapes=[{"N": 1, "V": 1}, {"N": 37, "V": 1000}, {"N": 129, "V": 32001}, {"N": 3, "V": 128256}],
    small_shapes=[{"N": 3, "V": 17}, {"N": 5, "V": 130}],
    flops=lambda s: 4.0 * s["N"] * s["V"],  # max, subtract, exp, add
    bytes=lambda s, dt: s["N"] * s["V"] * dtype_size(dt) + 8.0 * s["N"] + 4.0,
    seed="kernels.cross_entropy",
    forbidden=("torch.nn.functional.cross_entropy", "torch.nn.functional.nll_loss", "torch.nn.CrossEntropyLoss",
               "torch.nn.NLLLoss", "torch.logsumexp", "torch.Tensor.logsumexp", "torch.special.logsumexp",
               "torch.log_softmax", "torch.nn.functional.log_softmax", "torch.Tensor.log_softmax",
               "torch.special.log_softmax", "torch.softmax", "torch.nn.functional.softmax", "torch.Tensor.softmax"),
    tolerances={torch.float32: _FP32_LOSS, torch.float16: _FP32_LOSS, torch.bfloat16: _FP32_LOSS},
))
