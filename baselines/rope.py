"""Rotary position embedding (RoPE, rotate-half / GPT-NeoX layout, as in Llama) applied to
queries or keys of shape (tokens, heads, head_dim): a memory-bound elementwise op."""
import torch

from baselines.task import Task, dtype_size, generator, randn, register

THETA = 500000.0  # Llama 3's base frequency


def reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # In x's dtype, as Hugging Face's apply_rotary_pos_emb runs: an fp32 copy would make eager
    # slower than what models run. The bf16 roundings stay well inside the bf16 tolerance
    # (tests/baselines checks the reference against its float64 self).
    half = x.shape[-1] // 2
    c, s = cos[:, None, :], sin[:, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)


def make_inputs(shape, dtype, seed, device):
    gen = generator(seed, device)
    T, H, D = shape["T"], shape["H"], shape["D"]
    x = randn((T, H, D), dtype, gen)
    # Positions of a chunk that starts somewhere inside a long sequence (never all at 0).
    start = int(torch.randint(1, 4096, (1,), generator=gen, device=gen.device))
    positions = torch.arange(start, start + T, device=gen.device, dtype=torch.float32)
    inv_freq = THETA ** (-torch.arange(0, D, 2, device=gen.device, dtype=torch.float32) / D)
    angles = positions[:, None] * inv_freq[None, :]
    return x, angles.cos().to(dtype), angles.sin().to(dtype)


TASK = register(Task(
    name="rope",
    description=(
        "Rotary position embedding in the rotate-half (GPT-NeoX / Llama) layout. x has shape "
        "(T, H, D) (tokens, heads, head_dim; D even), cos and sin have shape (T, D/2), one row per "
        "token's position; all contiguous and of x's dtype. With h = D/2, for every token t, head j "
        "and i < h: y[t, j, i] = x[t, j, i] * cos[t, i] - x[t, j, i + h] * sin[t, i] and "
        "y[t, j, i + h] = x[t, j, i + h] * cos[t, i] + x[t, j, i] * sin[t, i]. "
        "Compute in fp32 (round once); return a new tensor y of shape (T, H, D) in x's dtype (do not write x)."
    ),
    signature="entry(x: Tensor[T, H, D], cos: Tensor[T, D/2], sin: Tensor[T, D/2]) -> Tensor[T, H, D]",
    reference=reference,
    make_inputs=make_inputs,
    # Queries of Llama-3-8B (32 heads) and 70B (64 heads), keys (8 KV heads) of a 32K prefill.
    shapes=[{"T": 16384, "H": 32, "D": 128}, {"T": 8192, "H": 64, "D": 128}, {"T": 32768, "H": 8, "D": 128}],
    check_shapes=[{"T": 1, "H": 1, "D": 2}, {"T": 37, "H": 3, "D": 64}, {"T": 129, "H": 5, "D": 96},
                  {"T": 1000, "H": 7, "D": 80}],
    small_shapes=[{"T": 3, "H": 2, "D": 8}, {"T": 5, "H": 3, "D": 12}],
    flops=lambda s: 3.0 * s["T"] * s["H"] * s["D"],  # per pair of outputs: 4 multiplies, 2 adds
    bytes=lambda s, dt: (2.0 * s["T"] * s["H"] * s["D"] + s["T"] * s["D"]) * dtype_size(dt),
    seed="kernels.rope",
    # Nothing to forbid: torch has no fused RoPE op.
))
