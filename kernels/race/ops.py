"""`torch.ops.evo.race_causal_fwd` / `race_causal_bwd`: custom ops with fake and autograd
registrations, so `race_causal` works under autograd and torch.compile (which treats each op as
one opaque node, its shapes known from the fake kernels)."""
import math

import torch
import triton

from kernels.race.chunk_bwd import race_causal_bwd
from kernels.race.chunk_fwd import CHUNK, hash_layout, race_causal_fwd, segment_length


@torch.library.custom_op("evo::race_causal_fwd", mutates_args=())
def race_causal_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor, beta: float,
                       chunk: int, seg_chunks: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return race_causal_fwd(q, k, v, w, beta, chunk, seg_chunks)


@race_causal_fwd_op.register_fake
def _(q, k, v, w, beta, chunk, seg_chunks):
    b, h, t, _ = q.shape
    n_buckets = hash_layout(w)[1]["L_PAD"] * 2 ** w.shape[1]
    n_seg = triton.cdiv(t, segment_length(t, b * h, chunk, seg_chunks))
    return (torch.empty_like(v, memory_format=torch.contiguous_format), q.new_empty(b, h, t, dtype=torch.float32),
            q.new_empty(b * h, n_seg, n_buckets, v.shape[-1], dtype=torch.float32),
            q.new_empty(b * h, n_seg, n_buckets, dtype=torch.float32))


@torch.library.custom_op("evo::race_causal_bwd", mutates_args=())
def race_causal_bwd_op(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor,
                       o: torch.Tensor, den: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor, beta: float,
                       chunk: int, seg_chunks: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return race_causal_bwd(do, q, k, v, w, o, den, sums, counts, beta, chunk, seg_chunks)


@race_causal_bwd_op.register_fake
def _(do, q, k, v, w, o, den, sums, counts, beta, chunk, seg_chunks):
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format),
            torch.empty_like(v, memory_format=torch.contiguous_format))


def _setup_context(ctx, inputs, output):
    q, k, v, w, beta, chunk, seg_chunks = inputs
    o, den, sums, counts = output
    ctx.mark_non_differentiable(den, sums, counts)
    ctx.save_for_backward(q, k, v, w, o, den, sums, counts)
    ctx.config = (beta, chunk, seg_chunks)


def _backward(ctx, do, _den, _sums, _counts):
    q, k, v, w, o, den, sums, counts = ctx.saved_tensors
    dq, dk, dv = race_causal_bwd_op(do, q, k, v, w, o, den, sums, counts, *ctx.config)
    return dq, dk, dv, None, None, None, None


race_causal_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def race_causal(q, k, v, w, beta=None, chunk=None, seg_chunks=0):
    """Causal RACE attention, global normalization: q, k (B, H, T, D), v (B, H, T, DV), hyperplanes
    w (L, P, D) (no gradient). Differentiable in q, k, v."""
    beta = 1.0 / math.sqrt(q.shape[-1]) if beta is None else float(beta)
    return race_causal_fwd_op(q, k, v, w, beta, chunk or CHUNK, seg_chunks)[0]
