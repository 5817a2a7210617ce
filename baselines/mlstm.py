"""mLSTM, the matrix-memory cell of xLSTM (methods.md §4): recurrent, parallel and chunkwise forms.

Per head, with q, k in R^dqk, v in R^dv, input-gate and forget-gate pre-activations i, f:
    f~ = logsigmoid(f);  m' = max(f~ + m, i);  F = exp(f~ + m - m');  I = exp(i - m')
    C' = F C + I k v^T;  n' = F n + I k;  q <- q / sqrt(dqk)
    h = (q^T C') / (max(|q^T n'|, exp(-m')) + eps)
C and n are kept scaled by exp(-m) (the stabilizer), so nothing overflows; h does not depend on
the stabilizer except through eps. The state starts at C = 0, n = 0, m = 0; with m0 = 0 the
parallel and chunkwise forms below reproduce the recurrence exactly, eps included:
m_t = max(F_t + m0, max_{j<=t} (F_t - F_j + i_j)) with F the cumulative log forget gate.

All forms compute in fp32 (float64 stays float64) and return h in the inputs' dtype and the
states (C, n, m) in fp32 (float64).
"""
import math

import torch
import torch.nn.functional as F

from baselines.task import Task, dtype_size, generator, randn, register, upcast

EPS = 1e-6


def _check(q, k, v, i, f):
    if q.shape != k.shape or q.shape[:-1] != v.shape[:-1] or i.shape != q.shape[:-1] or f.shape != i.shape:
        raise ValueError(f"expected q, k (..., T, dqk), v (..., T, dv), i, f (..., T); got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}, {tuple(i.shape)}, {tuple(f.shape)}")


def zero_state(q: torch.Tensor, dv: int):
    """(C, n, m) of an empty memory for q of shape (..., dqk) or (..., T, dqk) -> leading dims of q[..., 0, :]."""
    lead, dqk = q.shape[:-1], q.shape[-1]
    dtype = torch.promote_types(q.dtype, torch.float32)
    return (q.new_zeros(*lead, dqk, dv, dtype=dtype), q.new_zeros(*lead, dqk, dtype=dtype),
            q.new_zeros(*lead, dtype=dtype))


def mlstm_step(q, k, v, i, f, c, n, m, eps=EPS):
    """One decode step: q, k (..., dqk), v (..., dv), i, f, m (...), c (..., dqk, dv), n (..., dqk).
    Returns (h, c', n', m')."""
    dtype = q.dtype
    q, k, v, i, f = (upcast(x) for x in (q, k, v, i, f))
    c, n, m = upcast(c), upcast(n), upcast(m)
    log_f = F.logsigmoid(f)
    m_new = torch.maximum(log_f + m, i)
    decay, gain = torch.exp(log_f + m - m_new), torch.exp(i - m_new)
    c = decay[..., None, None] * c + gain[..., None, None] * (k[..., :, None] * v[..., None, :])
    n = decay[..., None] * n + gain[..., None] * k
    q = q / math.sqrt(q.shape[-1])
    num = torch.einsum("...k,...kv->...v", q, c)
    den = torch.maximum((q * n).sum(-1).abs(), torch.exp(-m_new)) + eps
    return (num / den[..., None]).to(dtype), c, n, m_new


def mlstm_recurrent(q, k, v, i, f, eps=EPS):
    """The recurrence token by token: q, k (B, H, T, dqk), v (B, H, T, dv), i, f (B, H, T)."""
    _check(q, k, v, i, f)
    c, n, m = zero_state(q[..., 0, :], v.shape[-1])
    hs = []
    for t in range(q.shape[-2]):
        h, c, n, m = mlstm_step(q[..., t, :], k[..., t, :], v[..., t, :], i[..., t], f[..., t], c, n, m, eps)
        hs.append(h)
    return torch.stack(hs, dim=-2), (c, n, m)


def mlstm_parallel(q, k, v, i, f, eps=EPS):
    """The quadratic form: h = (D * q k^T) v / max(|row sum|, exp(-m)), D_tj = exp(F_t - F_j + i_j - m_t)."""
    _check(q, k, v, i, f)
    dtype = q.dtype
    q, k, v, i, f = (upcast(x) for x in (q, k, v, i, f))
    t = q.shape[-2]
    cum = F.logsigmoid(f).cumsum(-1)
    log_d = cum[..., :, None] - cum[..., None, :] + i[..., None, :]
    causal = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
    log_d = log_d.masked_fill(~causal, -math.inf)
    m = torch.maximum(log_d.amax(-1), cum)  # cum = F_t + m0, the empty initial state's term
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1]) * torch.exp(log_d - m[..., None])
    den = torch.maximum(scores.sum(-1).abs(), torch.exp(-m)) + eps
    return ((scores @ v) / den[..., None]).to(dtype)


def mlstm_chunkwise(q, k, v, i, f, chunk=64, state=None, eps=EPS):
    """Chunkwise: (C, n, m) carried across chunks, the quadratic form inside each.
    `state` continues from a previous call (prefill in pieces). Returns (h, (C, n, m))."""
    _check(q, k, v, i, f)
    dtype = q.dtype
    q, k, v, i, f = (upcast(x) for x in (q, k, v, i, f))
    c, n, m = zero_state(q[..., 0, :], v.shape[-1]) if state is None else (upcast(s) for s in state)
    q = q / math.sqrt(q.shape[-1])
    log_f = F.logsigmoid(f)
    h = torch.empty_like(v)
    for start in range(0, q.shape[-2], chunk):
        end = min(start + chunk, q.shape[-2])
        qc, kc, vc, ic = q[..., start:end, :], k[..., start:end, :], v[..., start:end, :], i[..., start:end]
        b = log_f[..., start:end].cumsum(-1)  # log decay from the chunk start, inclusive
        causal = torch.ones(end - start, end - start, dtype=torch.bool, device=q.device).tril()
        log_d = (b[..., :, None] - b[..., None, :] + ic[..., None, :]).masked_fill(~causal, -math.inf)
        m_tok = torch.maximum(b + m[..., None], log_d.amax(-1))
        inter = torch.exp(b + m[..., None] - m_tok)
        scores = (qc @ kc.transpose(-1, -2)) * torch.exp(log_d - m_tok[..., None])
        num = scores @ vc + inter[..., None] * (qc @ c)
        s = scores.sum(-1) + inter * (qc @ n[..., :, None])[..., 0]
        h[..., start:end, :] = num / (torch.maximum(s.abs(), torch.exp(-m_tok)) + eps)[..., None]
        g = b[..., -1]
        m_new = torch.maximum(g + m, (g[..., None] - b + ic).amax(-1))
        weight = torch.exp(g[..., None] - b + ic - m_new[..., None])
        decay = torch.exp(g + m - m_new)
        c = decay[..., None, None] * c + (kc * weight[..., None]).transpose(-1, -2) @ vc
        n = decay[..., None] * n + (kc * weight[..., None]).sum(-2)
        m = m_new
    return h.to(dtype), (c, n, m)


# --- evolution tasks ---

def _gates(shape, gen):
    # xLSTM initializes forget gates open (sigmoid(f) near 0.95) and input gates near 0.
    i = randn(shape, torch.float32, gen)
    f = randn(shape, torch.float32, gen, shift=3.0)
    return i, f


def chunkwise_reference(q, k, v, i, f):
    return mlstm_chunkwise(q, k, v, i, f, chunk=256)[0]


def chunkwise_inputs(shape, dtype, seed, device):
    gen = generator(seed, device)
    b, h, t = shape["B"], shape["H"], shape["T"]
    q = randn((b, h, t, shape["DQK"]), dtype, gen)
    k = randn((b, h, t, shape["DQK"]), dtype, gen)
    v = randn((b, h, t, shape["DV"]), dtype, gen)
    i, f = _gates((b, h, t), gen)
    return q, k, v, i.to(dtype), f.to(dtype)


def chunkwise_flops(s) -> float:
    # per token-head: q.C_prev and the state update (2 x 2 dqk dv) plus the causal intra-chunk
    # part at chunk 64 (2 x 32 x (dqk + dv) on average): the cheapest chunking's work.
    return (4.0 * s["DQK"] * s["DV"] + 64.0 * (s["DQK"] + s["DV"])) * s["B"] * s["H"] * s["T"]


def chunkwise_bytes(s, dtype) -> float:
    return s["B"] * s["H"] * s["T"] * ((2 * s["DQK"] + 2 * s["DV"] + 2) * dtype_size(dtype))


def _seven_b(b, t, h=8):
    return {"B": b, "H": h, "T": t, "DQK": 256, "DV": 512}


CHUNKWISE_TASK = register(Task(
    name="mlstm_chunkwise_fwd",
    description=(
        "mLSTM forward (xLSTM's matrix memory) over a whole sequence, from an empty state. Inputs q, k "
        "(B, H, T, DQK), v (B, H, T, DV), input/forget gate pre-activations i, f (B, H, T). With "
        "F_t = sum_{s<=t} logsigmoid(f_s), log D_tj = F_t - F_j + i_j for j <= t, stabilizer "
        "m_t = max(F_t, max_{j<=t} log D_tj), S_tj = (q_t . k_j) / sqrt(DQK) * exp(log D_tj - m_t): "
        "h_t = sum_j S_tj v_j / (max(|sum_j S_tj|, exp(-m_t)) + 1e-6). Compute it chunkwise in linear "
        "time: carry the state (C: DQK x DV, n: DQK, m) across chunks in fp32 (scaled by exp(-m)), "
        "attend inside each chunk. Return h (B, H, T, DV) in v's dtype."
    ),
    signature="entry(q: Tensor[B, H, T, DQK], k: Tensor[B, H, T, DQK], v: Tensor[B, H, T, DV], "
              "i: Tensor[B, H, T], f: Tensor[B, H, T]) -> Tensor[B, H, T, DV]",
    reference=chunkwise_reference,
    make_inputs=chunkwise_inputs,
    shapes=[_seven_b(64, 1024), _seven_b(16, 4096), _seven_b(4, 16384), _seven_b(1, 65536)],
    check_shapes=[{"B": 1, "H": 2, "T": 1000, "DQK": 64, "DV": 128}, {"B": 2, "H": 1, "T": 1, "DQK": 256, "DV": 512},
                  {"B": 1, "H": 8, "T": 4097, "DQK": 256, "DV": 512}],
    small_shapes=[{"B": 1, "H": 2, "T": 37, "DQK": 16, "DV": 32}, {"B": 2, "H": 1, "T": 70, "DQK": 32, "DV": 16}],
    flops=chunkwise_flops,
    bytes=chunkwise_bytes,
    seed="kernels.mlstm.chunk_fwd",
))


def step_reference(q, k, v, i, f, c, n, m):
    return mlstm_step(q, k, v, i, f, c, n, m)


def step_inputs(shape, dtype, seed, device):
    gen = generator(seed, device)
    b, h, dqk, dv = shape["B"], shape["H"], shape["DQK"], shape["DV"]
    q, k = randn((b, h, dqk), dtype, gen), randn((b, h, dqk), dtype, gen)
    v = randn((b, h, dv), dtype, gen)
    i, f = _gates((b, h), gen)
    # a memory that has seen a few hundred tokens: entries of a few units, m of a few units
    c = randn((b, h, dqk, dv), torch.float32, gen, scale=2.0)
    n = randn((b, h, dqk), torch.float32, gen, scale=2.0)
    m = randn((b, h), torch.float32, gen, shift=2.0)
    return q, k, v, i.to(dtype), f.to(dtype), c, n, m


STEP_TASK = register(Task(
    name="mlstm_step",
    description=(
        "One mLSTM decode step per (batch, head). Inputs q, k (B, H, DQK), v (B, H, DV), gate "
        "pre-activations i, f (B, H) in the model dtype; state C (B, H, DQK, DV), n (B, H, DQK), m (B, H) "
        "in fp32. f~ = logsigmoid(f); m' = max(f~ + m, i); C' = exp(f~ + m - m') C + exp(i - m') k v^T; "
        "n' = exp(f~ + m - m') n + exp(i - m') k; with q scaled by 1/sqrt(DQK): "
        "h = (q C') / (max(|q . n'|, exp(-m')) + 1e-6). Return (h in q's dtype, C', n', m' in fp32)."
    ),
    signature="entry(q: Tensor[B, H, DQK], k: Tensor[B, H, DQK], v: Tensor[B, H, DV], i: Tensor[B, H], "
              "f: Tensor[B, H], C: Tensor[B, H, DQK, DV] fp32, n: Tensor[B, H, DQK] fp32, m: Tensor[B, H] fp32) "
              "-> (Tensor[B, H, DV], Tensor[B, H, DQK, DV], Tensor[B, H, DQK], Tensor[B, H])",
    reference=step_reference,
    make_inputs=step_inputs,
    shapes=[{"B": 1, "H": 8, "DQK": 256, "DV": 512}, {"B": 16, "H": 8, "DQK": 256, "DV": 512},
            {"B": 128, "H": 8, "DQK": 256, "DV": 512}],
    check_shapes=[{"B": 3, "H": 5, "DQK": 64, "DV": 128}, {"B": 1, "H": 1, "DQK": 256, "DV": 512}],
    small_shapes=[{"B": 2, "H": 3, "DQK": 16, "DV": 32}],
    flops=lambda s: 8.0 * s["B"] * s["H"] * s["DQK"] * s["DV"],  # decay, outer product, add, q.C'
    bytes=lambda s, dt: s["B"] * s["H"] * (2 * 4.0 * s["DQK"] * (s["DV"] + 1)
                                           + (2 * s["DQK"] + 2 * s["DV"] + 2) * dtype_size(dt)),
    seed="kernels.mlstm.step",
))
