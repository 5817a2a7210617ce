"""mLSTM decode step (Triton), seed of the `mlstm_step` task: one token per (batch, head).
Memory-bound on the state: each program streams a DQK x BV column block of C in and out once,
updating it and reducing q . C' on the way; every program also recomputes n' (DQK floats,
cheap) since the normalizer needs all of q . n'."""
import math

import torch
import triton
import triton.language as tl

BLOCK_V = 64  # tunable: 32, 64, 128, 256
BLOCK_K = 64  # tunable: 32, 64, 128
NUM_WARPS = 4  # tunable: 2, 4, 8
EPS = 1e-6


@triton.jit
def _mlstm_step(q_ptr, k_ptr, v_ptr, i_ptr, f_ptr, c_ptr, n_ptr, m_ptr, h_ptr, c_out, n_out, m_out, scale, eps,
                DQK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    pv, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    f = tl.load(f_ptr + bh).to(tl.float32)
    ig = tl.load(i_ptr + bh).to(tl.float32)
    m = tl.load(m_ptr + bh)
    log_f = tl.minimum(f, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(f)))  # logsigmoid, stable
    m_new = tl.maximum(log_f + m, ig)
    decay = tl.exp(log_f + m - m_new)
    gain = tl.exp(ig - m_new)
    rv = pv * BV + tl.arange(0, BV)
    v = tl.load(v_ptr + bh * DV + rv).to(tl.float32)
    num = tl.zeros((BV,), tl.float32)
    qn = tl.zeros((BK,), tl.float32)
    for k0 in range(0, DQK, BK):
        rk = k0 + tl.arange(0, BK)
        q = tl.load(q_ptr + bh * DQK + rk).to(tl.float32) * scale
        k = tl.load(k_ptr + bh * DQK + rk).to(tl.float32)
        offs = bh * DQK * DV + rk[:, None] * DV + rv[None, :]
        c = decay * tl.load(c_ptr + offs) + gain * k[:, None] * v[None, :]
        tl.store(c_out + offs, c)
        num += tl.sum(q[:, None] * c, axis=0)
        n = decay * tl.load(n_ptr + bh * DQK + rk) + gain * k
        qn += q * n
        if pv == 0:
            tl.store(n_out + bh * DQK + rk, n)
    den = tl.maximum(tl.abs(tl.sum(qn, axis=0)), tl.exp(-m_new)) + eps
    tl.store(h_ptr + bh * DV + rv, (num / den).to(h_ptr.dtype.element_ty))
    if pv == 0:
        tl.store(m_out + bh, m_new)


def mlstm_step(q, k, v, i, f, c, n, m):
    """q, k (B, H, DQK), v (B, H, DV), i, f (B, H); state c (B, H, DQK, DV), n (B, H, DQK), m (B, H) fp32.
    Returns (h, c', n', m'), the state out of place."""
    if q.shape != k.shape or q.shape[:-1] != v.shape[:-1] or i.shape != q.shape[:-1] or f.shape != i.shape \
            or c.shape != (*q.shape, v.shape[-1]) or n.shape != q.shape or m.shape != i.shape:
        raise ValueError(f"mlstm_step: inconsistent shapes q {tuple(q.shape)} k {tuple(k.shape)} v {tuple(v.shape)} "
                         f"i {tuple(i.shape)} f {tuple(f.shape)} C {tuple(c.shape)} n {tuple(n.shape)} m {tuple(m.shape)}")
    if c.dtype != torch.float32 or n.dtype != torch.float32 or m.dtype != torch.float32:
        raise ValueError("mlstm_step: the state (C, n, m) must be fp32")
    dqk, dv = q.shape[-1], v.shape[-1]
    for name, x in (("DQK", dqk), ("DV", dv)):
        if x < 16 or x & (x - 1):
            raise ValueError(f"{name}={x} must be a power of two >= 16")
    q, k, v, i, f, c, n, m = (x.contiguous() for x in (q, k, v, i, f, c, n, m))
    h, c_new, n_new, m_new = torch.empty_like(v), torch.empty_like(c), torch.empty_like(n), torch.empty_like(m)
    block_v, block_k = min(BLOCK_V, dv), min(BLOCK_K, dqk)
    grid = (triton.cdiv(dv, block_v), q.numel() // dqk)
    _mlstm_step[grid](q, k, v, i, f, c, n, m, h, c_new, n_new, m_new, 1.0 / math.sqrt(dqk), EPS, DQK=dqk, DV=dv,
                      BK=block_k, BV=block_v, num_warps=NUM_WARPS)
    return h, c_new, n_new, m_new


def entry(q, k, v, i, f, c, n, m):
    return mlstm_step(q, k, v, i, f, c, n, m)
