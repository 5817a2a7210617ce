"""torch.library ops (namespace evo) for the mLSTM kernels, with fake and autograd registrations,
so they work under autograd and torch.compile (each op one opaque node)."""
import torch
import triton

from kernels.mlstm.chunk_bwd import mlstm_chunkwise_bwd
from kernels.mlstm.chunk_fwd import CHUNK, mlstm_chunkwise_fwd
from kernels.mlstm.step import mlstm_step as _step

Tensor = torch.Tensor


@torch.library.custom_op("evo::mlstm_chunkwise_fwd", mutates_args=())
def mlstm_chunkwise_fwd_op(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, chunk: int, tile: int,
                           inference: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return mlstm_chunkwise_fwd(q, k, v, i, f, chunk, tile, inference)


@mlstm_chunkwise_fwd_op.register_fake
def _(q, k, v, i, f, chunk, tile, inference):
    b, h, t, dqk = q.shape
    dv = v.shape[-1]
    nc = triton.cdiv(t, chunk)
    f32 = dict(dtype=torch.float32)
    return (torch.empty_like(v, memory_format=torch.contiguous_format), k.new_empty(b * h, nc, dqk, dv),
            q.new_empty(b * h, dqk, dv, **f32), q.new_empty(b * h, nc + 1, dqk, **f32), q.new_empty(b * h, t, **f32),
            q.new_empty(b * h, t, **f32), q.new_empty(b * h, nc, **f32))


@torch.library.custom_op("evo::mlstm_chunkwise_bwd", mutates_args=())
def mlstm_chunkwise_bwd_op(dh: Tensor, q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, h: Tensor,
                           c_states: Tensor, n_states: Tensor, den: Tensor, s: Tensor, chunk: int, tile: int
                           ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return mlstm_chunkwise_bwd(dh, q, k, v, i, f, h, c_states, n_states, den, s, chunk, tile)


@mlstm_chunkwise_bwd_op.register_fake
def _(dh, q, k, v, i, f, h, c_states, n_states, den, s, chunk, tile):
    return tuple(torch.empty_like(x, memory_format=torch.contiguous_format) for x in (q, k, v, i, f))


def _setup_context(ctx, inputs, output):
    q, k, v, i, f, chunk, tile, _ = inputs
    h, c_states, c_final, n_states, den, s, m_chunk = output
    ctx.mark_non_differentiable(c_states, c_final, n_states, den, s, m_chunk)
    # no zero-filled gradients for the unused outputs (the bf16 chunk states alone are 1 GB at 7B shapes)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(q, k, v, i, f, h, c_states, n_states, den, s)
    ctx.config = (chunk, tile)


def _backward(ctx, dh, *_unused):
    if dh is None:  # h took no part in the loss
        return (None,) * 8
    return (*mlstm_chunkwise_bwd_op(dh, *ctx.saved_tensors, *ctx.config), None, None, None)


mlstm_chunkwise_fwd_op.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("evo::mlstm_step", mutates_args=())
def mlstm_step_op(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, c: Tensor, n: Tensor, m: Tensor
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _step(q, k, v, i, f, c, n, m)


@mlstm_step_op.register_fake
def _(q, k, v, i, f, c, n, m):
    return tuple(torch.empty_like(x, memory_format=torch.contiguous_format) for x in (v, c, n, m))


def mlstm_chunkwise(q, k, v, i, f, chunk=None, tile=None, return_state=False):
    """mLSTM over whole sequences from an empty state: q, k (B, H, T, DQK), v (B, H, T, DV), gate
    pre-activations i, f (B, H, T). Differentiable in all five. With return_state, also the final
    (C, n, m), fp32, to continue with `mlstm_step`. No chunk: chunk_fwd.CHUNK."""
    chunk = chunk or CHUNK
    # tile 0: each attend (forward h; backward dq, dk, dv) takes its own tile setting
    tile = min(tile, chunk) if tile else 0
    # no backward to come: the inference forward's settings (chunk_fwd.inference_scan_config), and with no graph to
    # trace either, straight to the kernels past the op's dispatch
    inference = not (torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v, i, f)))
    fwd = mlstm_chunkwise_fwd if inference and not torch.compiler.is_compiling() else mlstm_chunkwise_fwd_op
    h, _, c_final, n_states, _, _, m_chunk = fwd(q, k, v, i, f, chunk, tile, inference)
    if not return_state:
        return h
    b, nh, _, dqk = q.shape
    state = (c_final.view(b, nh, dqk, v.shape[-1]), n_states[:, -1].view(b, nh, dqk),
             m_chunk[:, -1].view(b, nh))
    return h, state


def mlstm_step(q, k, v, i, f, c, n, m):
    """One decode step: q, k (B, H, DQK), v (B, H, DV), i, f (B, H), state (C, n, m) fp32 -> (h, C', n', m')."""
    return mlstm_step_op(q, k, v, i, f, c, n, m)
