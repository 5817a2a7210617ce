"""`torch.ops.evo.race_fwd` / `race_bwd`: custom ops with fake and autograd registrations, so
`race_attention` works under autograd and torch.compile (which treats each op as one opaque
node, its shapes known from the fake kernels)."""
import math

import torch
import triton

from kernels.race.chunk_bwd import race_bwd
from kernels.race.chunk_fwd import CHUNK, hash_consts, race_fwd, segment_length

Tensor = torch.Tensor


@torch.library.custom_op("evo::race_fwd", mutates_args=())
def race_fwd_op(q: Tensor, k: Tensor, v: Tensor, w: Tensor, beta: float, chunk: int, seg_chunks: int, causal: bool
                ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return race_fwd(q, k, v, w, beta, chunk, seg_chunks, causal)


@race_fwd_op.register_fake
def _(q, k, v, w, beta, chunk, seg_chunks, causal):
    b, h, t, _ = q.shape
    n_buckets = hash_consts(w.shape[0], w.shape[1])["L_PAD"] * 2 ** w.shape[1]
    n_seg = triton.cdiv(t, segment_length(t, b * h, chunk, seg_chunks, n_buckets))
    return (torch.empty_like(v, memory_format=torch.contiguous_format), q.new_empty(b, h, t, dtype=torch.float32),
            q.new_empty(b * h, n_seg, v.shape[-1] + 1, n_buckets, dtype=torch.float32),
            q.new_empty(b, h, t, n_buckets), q.new_empty(b, h, t, n_buckets))


@torch.library.custom_op("evo::race_bwd", mutates_args=())
def race_bwd_op(do: Tensor, q: Tensor, k: Tensor, v: Tensor, w: Tensor, o: Tensor, den: Tensor, state: Tensor,
                phq: Tensor, phk: Tensor, beta: float, chunk: int, seg_chunks: int, causal: bool
                ) -> tuple[Tensor, Tensor, Tensor]:
    return race_bwd(do, q, k, v, w, o, den, state, phq, phk, beta, chunk, seg_chunks, causal)


@race_bwd_op.register_fake
def _(do, q, k, v, w, o, den, state, phq, phk, beta, chunk, seg_chunks, causal):
    return tuple(torch.empty_like(x, memory_format=torch.contiguous_format) for x in (q, k, v))


def _setup_context(ctx, inputs, output):
    q, k, v, w, beta, chunk, seg_chunks, causal = inputs
    o, den, state, phq, phk = output
    ctx.mark_non_differentiable(den, state, phq, phk)
    # no zero-filled gradients for the unused outputs (phi and the states: 1.3 ms of (4,4)'s 4M fwd+bwd)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(q, k, v, w, o, den, state, phq, phk)
    ctx.config = (beta, chunk, seg_chunks, causal)


def _backward(ctx, do, *_unused):
    if do is None:  # o took no part in the loss
        return (None,) * 8
    dq, dk, dv = race_bwd_op(do, *ctx.saved_tensors, *ctx.config)
    return dq, dk, dv, None, None, None, None, None


race_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def race_attention(q, k, v, w, beta=None, causal=True, chunk=None, seg_chunks=0):
    """RACE attention, global normalization: q, k (B, H, T, D), v (B, H, T, DV), hyperplanes
    w (L, P, D) (fixed random projections: no gradient). Differentiable in q, k, v."""
    beta = 1.0 / math.sqrt(q.shape[-1]) if beta is None else float(beta)
    if not torch.compiler.is_compiling() and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad
                                                                                or v.requires_grad)):
        # no backward to come, no graph to trace: straight to the kernels, past the custom op's dispatch
        # and without saving phi(q) and den
        return race_fwd(q, k, v, w, beta, chunk or CHUNK, seg_chunks, causal, save=False)[0]
    return race_fwd_op(q, k, v, w, beta, chunk or CHUNK, seg_chunks, causal)[0]


def race_causal(q, k, v, w, beta=None, chunk=None, seg_chunks=0):
    return race_attention(q, k, v, w, beta, True, chunk, seg_chunks)
