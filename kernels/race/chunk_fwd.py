"""Causal RACE attention forward (global normalization): the soft-hash projection fused into a
chunked causal linear-attention scan. Seed of the `race_causal` task; the library op
(kernels/race/ops.py) uses `race_fwd`, which also returns what the backward needs, and, with
causal=False, computes non-causal RACE with the same kernels (every segment starts from the totals).

One program per (segment of the sequence, batch*head): a single running state per head would
use only B*H of the GPU's programs, so the sequence is cut into segments.
  1. `_race_segment_sums`: each segment's sum of phi(k) v^T (S x DV) and phi(k) (S), fp32.
  2. an exclusive prefix over segments (torch; a few KB per segment).
  3. `_race_fwd_chunks`: each segment scans its chunks from its prefix state:
     o = (mask(phi(q) phi(k)^T) v + phi(q) B) / (rowsum(mask(phi(q) phi(k)^T)) + phi(q) . A).
phi never leaves the chip: q and k are hashed in registers (x @ W^T, tanh, and the corner
softmax as a product of sigmoids: softmax_r(beta t . v_r) = prod_p sigmoid(2 beta v_r[p] t_p)).
"""
import math

import torch
import triton
import triton.language as tl

CHUNK = 64  # tunable: 32, 64, 128
NUM_WARPS = 8  # tunable: 4, 8
NUM_STAGES = 2  # tunable: 1, 2, 3
TARGET_PROGRAMS = 1024  # tunable: 264, 528, 1024, 2048


@triton.jit
def _soft_hash(x, wt, beta, P: tl.constexpr, L: tl.constexpr, P_PAD: tl.constexpr, L_PAD: tl.constexpr,
               R: tl.constexpr):
    """x (C, D) -> phi (C, L_PAD * R) fp32; wt (D, P_PAD * L_PAD) holds W[l, p] in column p * L_PAD + l."""
    C: tl.constexpr = x.shape[0]
    u = tl.dot(x, wt.to(x.dtype))
    t = 1.0 - 2.0 / (tl.exp(2.0 * u) + 1.0)  # tanh
    t3 = tl.reshape(t, (C, P_PAD, L_PAD))
    p_idx = tl.arange(0, P_PAD)[None, :, None]
    r_idx = tl.arange(0, R)[None, None, :]
    phi = tl.full((C, L_PAD, R), 1.0, tl.float32)
    for p in tl.static_range(P):
        a = tl.sigmoid(2.0 * beta * tl.sum(tl.where(p_idx == p, t3, 0.0), axis=1))[:, :, None]
        phi *= tl.where(((r_idx >> p) & 1) == 1, a, 1.0 - a)
    phi = tl.where(tl.arange(0, L_PAD)[None, :, None] < L, phi, 0.0)
    return tl.reshape(phi, (C, L_PAD * R))


@triton.jit
def _race_segment_sums(k_ptr, v_ptr, wt_ptr, sums_ptr, counts_ptr, T, seg_len, n_seg, beta,
                       D: tl.constexpr, DV: tl.constexpr, CHUNK: tl.constexpr, P: tl.constexpr, L: tl.constexpr,
                       P_PAD: tl.constexpr, L_PAD: tl.constexpr, R: tl.constexpr):
    seg, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    S: tl.constexpr = L_PAD * R
    HW: tl.constexpr = P_PAD * L_PAD
    k_ptr += bh * T * D
    v_ptr += bh * T * DV
    cd, cv, cs = tl.arange(0, D), tl.arange(0, DV), tl.arange(0, S)
    wt = tl.load(wt_ptr + cd[:, None] * HW + tl.arange(0, HW)[None, :])
    sums = tl.zeros((S, DV), tl.float32)
    counts = tl.zeros((S,), tl.float32)
    for start in range(seg * seg_len, tl.minimum(T, (seg + 1) * seg_len), CHUNK):
        rows = start + tl.arange(0, CHUNK)
        valid = rows < T
        k = tl.load(k_ptr + rows[:, None] * D + cd[None, :], mask=valid[:, None], other=0.0)
        v = tl.load(v_ptr + rows[:, None] * DV + cv[None, :], mask=valid[:, None], other=0.0)
        phk = tl.where(valid[:, None], _soft_hash(k, wt, beta, P, L, P_PAD, L_PAD, R), 0.0).to(v.dtype)
        sums += tl.dot(tl.trans(phk), v)
        counts += tl.sum(phk.to(tl.float32), axis=0)
    out = bh * n_seg + seg
    tl.store(sums_ptr + out * S * DV + cs[:, None] * DV + cv[None, :], sums)
    tl.store(counts_ptr + out * S + cs, counts)


@triton.jit
def _race_fwd_chunks(q_ptr, k_ptr, v_ptr, wt_ptr, sums_ptr, counts_ptr, o_ptr, den_ptr, T, seg_len, n_seg, beta,
                     D: tl.constexpr, DV: tl.constexpr, CHUNK: tl.constexpr, P: tl.constexpr, L: tl.constexpr,
                     P_PAD: tl.constexpr, L_PAD: tl.constexpr, R: tl.constexpr, CAUSAL: tl.constexpr):
    seg, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    S: tl.constexpr = L_PAD * R
    HW: tl.constexpr = P_PAD * L_PAD
    q_ptr += bh * T * D
    k_ptr += bh * T * D
    v_ptr += bh * T * DV
    o_ptr += bh * T * DV
    den_ptr += bh * T
    cd, cv, cs = tl.arange(0, D), tl.arange(0, DV), tl.arange(0, S)
    wt = tl.load(wt_ptr + cd[:, None] * HW + tl.arange(0, HW)[None, :])
    state = bh * n_seg + seg
    sums = tl.load(sums_ptr + state * S * DV + cs[:, None] * DV + cv[None, :])  # phi(k) v^T before the segment
    counts = tl.load(counts_ptr + state * S + cs)  # phi(k) before the segment
    causal = tl.arange(0, CHUNK)[:, None] >= tl.arange(0, CHUNK)[None, :]
    for start in range(seg * seg_len, tl.minimum(T, (seg + 1) * seg_len), CHUNK):
        rows = start + tl.arange(0, CHUNK)
        valid = rows < T
        q = tl.load(q_ptr + rows[:, None] * D + cd[None, :], mask=valid[:, None], other=0.0)
        k = tl.load(k_ptr + rows[:, None] * D + cd[None, :], mask=valid[:, None], other=0.0)
        v = tl.load(v_ptr + rows[:, None] * DV + cv[None, :], mask=valid[:, None], other=0.0)
        # phi rounded once to the input dtype, and that value used in numerator and denominator alike
        phq = _soft_hash(q, wt, beta, P, L, P_PAD, L_PAD, R).to(v.dtype)
        phk = tl.where(valid[:, None], _soft_hash(k, wt, beta, P, L, P_PAD, L_PAD, R), 0.0).to(v.dtype)
        phq32 = phq.to(tl.float32)
        num = tl.dot(phq32, sums)
        den = tl.sum(phq32 * counts[None, :], axis=1)
        if CAUSAL:  # the chunk's own keys; without CAUSAL, sums/counts already hold every key
            a = tl.where(causal, tl.dot(phq, tl.trans(phk)), 0.0)
            num += tl.dot(a.to(v.dtype), v)
            den += tl.sum(a, axis=1)
            sums += tl.dot(tl.trans(phk), v)
            counts += tl.sum(phk.to(tl.float32), axis=0)
        tl.store(o_ptr + rows[:, None] * DV + cv[None, :], (num / den[:, None]).to(o_ptr.dtype.element_ty),
                 mask=valid[:, None])
        tl.store(den_ptr + rows, den, mask=valid)


def hash_layout(w: torch.Tensor):
    """(L, P, D) hyperplanes -> (wt (D, P_PAD * L_PAD) fp32, constexprs). Pads so every dot is >= 16 wide."""
    n_tables, p, d = w.shape
    r = 2**p
    l_pad = max(triton.next_power_of_2(n_tables), triton.cdiv(16, r))
    p_pad = max(triton.next_power_of_2(p), triton.cdiv(16, l_pad))
    wt = w.new_zeros(p_pad, l_pad, d, dtype=torch.float32)
    wt[:p, :n_tables] = w.float().transpose(0, 1)
    return wt.reshape(p_pad * l_pad, d).t().contiguous(), dict(P=p, L=n_tables, P_PAD=p_pad, L_PAD=l_pad, R=r)


def check_inputs(q, k, v, w):
    if q.dim() != 4 or q.shape != k.shape or q.shape[:-1] != v.shape[:-1]:
        raise ValueError(f"expected q, k (B, H, T, D) and v (B, H, T, DV); got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if w.dim() != 3 or w.shape[-1] != q.shape[-1]:
        raise ValueError(f"expected w (L, P, D={q.shape[-1]}), got {tuple(w.shape)}")
    for name, n in (("D", q.shape[-1]), ("DV", v.shape[-1])):
        if n < 16 or n & (n - 1):
            raise ValueError(f"{name}={n}: head sizes must be powers of two >= 16")
    if w.shape[1] > 8:
        raise ValueError(f"P={w.shape[1]} hyperplanes per table: at most 8 (2^P buckets per table)")


def segment_length(t: int, bh: int, chunk: int, seg_chunks: int = 0) -> int:
    """Tokens per segment: enough segments that B*H*segments ~ TARGET_PROGRAMS, whole chunks each."""
    if seg_chunks <= 0:
        seg_chunks = triton.cdiv(triton.cdiv(t, chunk), max(1, TARGET_PROGRAMS // bh))
    return seg_chunks * chunk


def starting_sums(x: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """Per-segment sums (dim 1) -> what each segment starts from: the sum over the segments before
    it when causal, over all of them when not."""
    if not causal:
        return x.sum(1, keepdim=True).expand_as(x).contiguous()
    out = torch.zeros_like(x)
    out[:, 1:] = x[:, :-1].cumsum(1)
    return out


def race_fwd(q, k, v, w, beta=None, chunk=None, seg_chunks=0, causal=True):
    """Returns (o, den, sums, counts): the backward rescans from the saved per-segment starting sums
    (prefixes when causal, totals when not)."""
    check_inputs(q, k, v, w)
    chunk = chunk or CHUNK
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    b, h, t, d = q.shape
    dv = v.shape[-1]
    beta = 1.0 / math.sqrt(d) if beta is None else float(beta)
    wt, consts = hash_layout(w)
    s = consts["L_PAD"] * consts["R"]
    seg_len = segment_length(t, b * h, chunk, seg_chunks)
    n_seg = triton.cdiv(t, seg_len)
    sums = torch.zeros(b * h, n_seg, s, dv, device=q.device, dtype=torch.float32)
    counts = torch.zeros(b * h, n_seg, s, device=q.device, dtype=torch.float32)
    launch = dict(D=d, DV=dv, CHUNK=chunk, num_warps=NUM_WARPS, num_stages=NUM_STAGES, **consts)
    if n_seg > 1 or not causal:
        _race_segment_sums[(n_seg, b * h)](k, v, wt, sums, counts, t, seg_len, n_seg, beta, **launch)
        sums, counts = starting_sums(sums, causal), starting_sums(counts, causal)
    o = torch.empty_like(v)
    den = torch.empty(b, h, t, device=q.device, dtype=torch.float32)
    _race_fwd_chunks[(n_seg, b * h)](q, k, v, wt, sums, counts, o, den, t, seg_len, n_seg, beta, CAUSAL=causal,
                                     **launch)
    return o, den, sums, counts


def entry(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return race_fwd(q, k, v, w)[0]
