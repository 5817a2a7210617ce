"""Single-token GQA decode attention over a KV cache: the memory-bound inner loop of LLM
serving (every step reads the whole cache once)."""
import torch

from baselines.peers import sdpa_decode
from baselines.task import Task, dtype_size, generator, randn, register, upcast


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    B, Hq, D = q.shape
    Hkv = k.shape[1]
    qf = upcast(q).view(B, Hkv, Hq // Hkv, D)  # query heads j*G .. j*G+G-1 share KV head j
    scores = torch.einsum("bhgd,bhsd->bhgs", qf, upcast(k)) * D ** -0.5
    out = torch.einsum("bhgs,bhsd->bhgd", torch.softmax(scores, dim=-1), upcast(v))
    return out.reshape(B, Hq, D).to(q.dtype)


def make_inputs(shape, dtype, seed, device):
    gen = generator(seed, device)
    B, Hq, Hkv, S, D = shape["B"], shape["Hq"], shape["Hkv"], shape["S"], shape["D"]
    # Scores with std ~3 concentrate each head on a few dozen keys, as trained attention
    # does; unit-scale queries would give near-uniform weights and a near-zero output.
    q = randn((B, Hq, D), dtype, gen, scale=3.0)
    k = randn((B, Hkv, S, D), dtype, gen)
    v = randn((B, Hkv, S, D), dtype, gen)
    return q, k, v


TASK = register(Task(
    name="decode_attention",
    description=(
        "Grouped-query attention for one new token per sequence (the decode step). q has shape "
        "(B, Hq, D); the KV cache k and v have shape (B, Hkv, S, D) (S cached positions, all "
        "valid, no mask); all contiguous and of the same dtype; Hq is a multiple of Hkv and query "
        "head h reads KV head h // (Hq // Hkv). For every b, h: "
        "p = softmax_s(q[b, h] . k[b, h // G, s] / sqrt(D)), out[b, h] = sum_s p[s] * v[b, h // G, s]. "
        "Accumulate in fp32; return out of shape (B, Hq, D) in q's dtype. The time is reading "
        "the cache: read each KV head once for all of its G query heads, and split long S over "
        "several programs (flash-decoding) when B * Hkv is too small to fill the GPU."
    ),
    signature="entry(q: Tensor[B, Hq, D], k: Tensor[B, Hkv, S, D], v: Tensor[B, Hkv, S, D]) -> Tensor[B, Hq, D]",
    reference=reference,
    make_inputs=make_inputs,
    # Llama-3-8B (32 q / 8 kv heads) at 128K context and at a large batch of 8K contexts;
    # Llama-3-70B (64 / 8) at 32K.
    shapes=[{"B": 8, "Hq": 32, "Hkv": 8, "S": 131072, "D": 128},
            {"B": 64, "Hq": 32, "Hkv": 8, "S": 8192, "D": 128},
            {"B": 16, "Hq": 64, "Hkv": 8, "S": 32768, "D": 128}],
    check_shapes=[{"B": 1, "Hq": 1, "Hkv": 1, "S": 1, "D": 64},
                  {"B": 3, "Hq": 12, "Hkv": 4, "S": 1000, "D": 64},
                  {"B": 2, "Hq": 8, "Hkv": 1, "S": 4097, "D": 128},
                  {"B": 1, "Hq": 6, "Hkv": 2, "S": 333, "D": 96}],
    small_shapes=[{"B": 1, "Hq": 2, "Hkv": 1, "S": 5, "D": 8}, {"B": 2, "Hq": 4, "Hkv": 2, "S": 37, "D": 16}],
    # q.k and p.v: 2 * D each per (query head, position); softmax ~5 per score.
    flops=lambda s: s["B"] * s["Hq"] * s["S"] * (4.0 * s["D"] + 5.0),
    bytes=lambda s, dt: (2.0 * s["B"] * s["Hkv"] * s["S"] * s["D"] + 2.0 * s["B"] * s["Hq"] * s["D"]) * dtype_size(dt),
    seed="kernels.decode_attention",
    forbidden=("torch.nn.functional.scaled_dot_product_attention", "torch.ops.aten.scaled_dot_product_attention",
               "torch.ops.aten._scaled_dot_product_flash_attention",
               "torch.ops.aten._scaled_dot_product_efficient_attention",
               "torch.ops.aten._scaled_dot_product_cudnn_attention",
               "torch.nn.attention.flex_attention.flex_attention", "torch.nn.MultiheadAttention",
               "torch.nn.functional.multi_head_attention_forward"),
    peers={"sdpa": sdpa_decode},
))
