"""RACE attention backward (global normalization), the same segment-parallel scans. Without
causal masking the same kernels run with every segment starting from the totals.

With a_tj = phi(q_t).phi(k_j) (j <= t), den_t = sum_j a_tj, o_t = sum_j a_tj v_j / den_t and
g = dL/do:  dn_t = g_t / den_t,  dd_t = -(g_t . o_t) / den_t,  dA_tj = dn_t . v_j + dd_t.
- dphi(q_t) = sum_{j<=t} dA_tj phi(k_j) = dn_t B_t^T + dd_t A_t: a forward scan that starts
  each segment from the prefix state the forward pass saved (`_race_bwd_dq`).
- dphi(k_j) = sum_{t>=j} dA_tj phi(q_t) = D_j v_j + E_j and dv_j = sum_{t>=j} a_tj dn_t
  = D_j^T phi(k_j), with D_j = sum_{t>=j} phi(q_t) dn_t^T and E_j = sum_{t>=j} dd_t phi(q_t):
  a reverse scan, segment suffix sums first (`_race_bwd_segment_sums`, then `_race_bwd_dkdv`).
The hash backward runs in registers too: phi = prod_p f_p with f_p = sigmoid(+-2 beta t_p).
The hyperplanes get no gradient: they are RACE's fixed random projections.
"""
import math

import torch
import triton
import triton.language as tl

from kernels.race.chunk_fwd import (CHUNK, NUM_STAGES, NUM_WARPS, _soft_hash, check_inputs, hash_layout,
                                    segment_length, starting_sums)


@triton.jit
def _soft_hash_bwd(x, wt, dphi, beta, P: tl.constexpr, L: tl.constexpr, P_PAD: tl.constexpr,
                   L_PAD: tl.constexpr, R: tl.constexpr):
    """dL/dx (C, D) fp32 from dL/dphi (C, L_PAD * R), recomputing the hash of x."""
    C: tl.constexpr = x.shape[0]
    u = tl.dot(x, wt.to(x.dtype))
    t = 1.0 - 2.0 / (tl.exp(2.0 * u) + 1.0)
    t3 = tl.reshape(t, (C, P_PAD, L_PAD))
    p_idx = tl.arange(0, P_PAD)[None, :, None]
    r_idx = tl.arange(0, R)[None, None, :]
    phi = tl.full((C, L_PAD, R), 1.0, tl.float32)
    for p in tl.static_range(P):
        a = tl.sigmoid(2.0 * beta * tl.sum(tl.where(p_idx == p, t3, 0.0), axis=1))[:, :, None]
        phi *= tl.where(((r_idx >> p) & 1) == 1, a, 1.0 - a)
    grad = tl.reshape(dphi, (C, L_PAD, R)) * phi  # dL/dlog(phi), zero in padded tables as dphi is
    grad = tl.where(tl.arange(0, L_PAD)[None, :, None] < L, grad, 0.0)
    du = tl.zeros((C, P_PAD, L_PAD), tl.float32)
    for p in tl.static_range(P):
        t_p = tl.sum(tl.where(p_idx == p, t3, 0.0), axis=1)
        a = tl.sigmoid(2.0 * beta * t_p)
        bit = ((r_idx >> p) & 1) == 1
        # d log f_p / d a: 1/a where the corner's bit is set, -1/(1 - a) where not
        da = tl.sum(grad * tl.where(bit, 1.0 / a[:, :, None], -1.0 / (1.0 - a[:, :, None])), axis=2)
        du_p = da * (2.0 * beta) * a * (1.0 - a) * (1.0 - t_p * t_p)
        du += tl.where(p_idx == p, du_p[:, None, :], 0.0)
    return tl.dot(tl.reshape(du, (C, P_PAD * L_PAD)), tl.trans(wt))


@triton.jit
def _race_bwd_dq(q_ptr, k_ptr, v_ptr, o_ptr, do_ptr, den_ptr, wt_ptr, sums_ptr, counts_ptr, dq_ptr,
                 T, seg_len, n_seg, beta, D: tl.constexpr, DV: tl.constexpr, CHUNK: tl.constexpr,
                 P: tl.constexpr, L: tl.constexpr, P_PAD: tl.constexpr, L_PAD: tl.constexpr, R: tl.constexpr,
                 CAUSAL: tl.constexpr):
    seg, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    S: tl.constexpr = L_PAD * R
    HW: tl.constexpr = P_PAD * L_PAD
    q_ptr += bh * T * D
    k_ptr += bh * T * D
    dq_ptr += bh * T * D
    v_ptr += bh * T * DV
    o_ptr += bh * T * DV
    do_ptr += bh * T * DV
    den_ptr += bh * T
    cd, cv, cs = tl.arange(0, D), tl.arange(0, DV), tl.arange(0, S)
    wt = tl.load(wt_ptr + cd[:, None] * HW + tl.arange(0, HW)[None, :])
    state = bh * n_seg + seg
    sums = tl.load(sums_ptr + state * S * DV + cs[:, None] * DV + cv[None, :])
    counts = tl.load(counts_ptr + state * S + cs)
    causal = tl.arange(0, CHUNK)[:, None] >= tl.arange(0, CHUNK)[None, :]
    for start in range(seg * seg_len, tl.minimum(T, (seg + 1) * seg_len), CHUNK):
        rows = start + tl.arange(0, CHUNK)
        valid = rows < T
        q = tl.load(q_ptr + rows[:, None] * D + cd[None, :], mask=valid[:, None], other=0.0)
        k = tl.load(k_ptr + rows[:, None] * D + cd[None, :], mask=valid[:, None], other=0.0)
        v = tl.load(v_ptr + rows[:, None] * DV + cv[None, :], mask=valid[:, None], other=0.0)
        o = tl.load(o_ptr + rows[:, None] * DV + cv[None, :], mask=valid[:, None], other=0.0).to(tl.float32)
        do = tl.load(do_ptr + rows[:, None] * DV + cv[None, :], mask=valid[:, None], other=0.0).to(tl.float32)
        den = tl.load(den_ptr + rows, mask=valid, other=1.0)
        phk = tl.where(valid[:, None], _soft_hash(k, wt, beta, P, L, P_PAD, L_PAD, R), 0.0).to(v.dtype)
        dn = do / den[:, None]
        dd = -tl.sum(do * o, axis=1) / den
        dphq = tl.dot(dn, tl.trans(sums)) + dd[:, None] * counts[None, :]
        if CAUSAL:
            dp = tl.where(causal, tl.dot(dn.to(v.dtype), tl.trans(v)) + dd[:, None], 0.0)
            dphq += tl.dot(dp.to(v.dtype), phk)
            sums += tl.dot(tl.trans(phk), v)
            counts += tl.sum(phk.to(tl.float32), axis=0)
        dq = _soft_hash_bwd(q, wt, dphq, beta, P, L, P_PAD, L_PAD, R)
        tl.store(dq_ptr + rows[:, None] * D + cd[None, :], dq.to(dq_ptr.dtype.element_ty), mask=valid[:, None])


@triton.jit
def _race_bwd_segment_sums(q_ptr, o_ptr, do_ptr, den_ptr, wt_ptr, dsums_ptr, dcounts_ptr, T, seg_len, n_seg, beta,
                           D: tl.constexpr, DV: tl.constexpr, CHUNK: tl.constexpr, P: tl.constexpr,
                           L: tl.constexpr, P_PAD: tl.constexpr, L_PAD: tl.constexpr, R: tl.constexpr):
    seg, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    S: tl.constexpr = L_PAD * R
    HW: tl.constexpr = P_PAD * L_PAD
    q_ptr += bh * T * D
    o_ptr += bh * T * DV
    do_ptr += bh * T * DV
    den_ptr += bh * T
    cd, cv, cs = tl.arange(0, D), tl.arange(0, DV), tl.arange(0, S)
    wt = tl.load(wt_ptr + cd[:, None] * HW + tl.arange(0, HW)[None, :])
    dsums = tl.zeros((S, DV), tl.float32)
    dcounts = tl.zeros((S,), tl.float32)
    for start in range(seg * seg_len, tl.minimum(T, (seg + 1) * seg_len), CHUNK):
        rows = start + tl.arange(0, CHUNK)
        valid = rows < T
        q = tl.load(q_ptr + rows[:, None] * D + cd[None, :], mask=valid[:, None], other=0.0)
        o = tl.load(o_ptr + rows[:, None] * DV + cv[None, :], mask=valid[:, None], other=0.0).to(tl.float32)
        do = tl.load(do_ptr + rows[:, None] * DV + cv[None, :], mask=valid[:, None], other=0.0).to(tl.float32)
        den = tl.load(den_ptr + rows, mask=valid, other=1.0)
        phq = _soft_hash(q, wt, beta, P, L, P_PAD, L_PAD, R).to(q.dtype).to(tl.float32)
        dn = do / den[:, None]
        dd = -tl.sum(do * o, axis=1) / den
        dsums += tl.dot(tl.trans(phq), dn)
        dcounts += tl.sum(phq * dd[:, None], axis=0)
    out = bh * n_seg + seg
    tl.store(dsums_ptr + out * S * DV + cs[:, None] * DV + cv[None, :], dsums)
    tl.store(dcounts_ptr + out * S + cs, dcounts)


@triton.jit
def _race_bwd_dkdv(q_ptr, k_ptr, v_ptr, o_ptr, do_ptr, den_ptr, wt_ptr, dsums_ptr, dcounts_ptr, dk_ptr, dv_ptr,
                   T, seg_len, n_seg, beta, D: tl.constexpr, DV: tl.constexpr, CHUNK: tl.constexpr,
                   P: tl.constexpr, L: tl.constexpr, P_PAD: tl.constexpr, L_PAD: tl.constexpr, R: tl.constexpr,
                 CAUSAL: tl.constexpr):
    seg, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    S: tl.constexpr = L_PAD * R
    HW: tl.constexpr = P_PAD * L_PAD
    q_ptr += bh * T * D
    k_ptr += bh * T * D
    dk_ptr += bh * T * D
    v_ptr += bh * T * DV
    o_ptr += bh * T * DV
    do_ptr += bh * T * DV
    dv_ptr += bh * T * DV
    den_ptr += bh * T
    cd, cv, cs = tl.arange(0, D), tl.arange(0, DV), tl.arange(0, S)
    wt = tl.load(wt_ptr + cd[:, None] * HW + tl.arange(0, HW)[None, :])
    state = bh * n_seg + seg
    dsums = tl.load(dsums_ptr + state * S * DV + cs[:, None] * DV + cv[None, :])  # sum over later segments
    dcounts = tl.load(dcounts_ptr + state * S + cs)
    later = tl.arange(0, CHUNK)[:, None] <= tl.arange(0, CHUNK)[None, :]  # row j, column t >= j
    seg_start = seg * seg_len
    n_chunks = tl.cdiv(tl.minimum(T, seg_start + seg_len) - seg_start, CHUNK)
    for c in range(n_chunks):
        rows = seg_start + (n_chunks - 1 - c) * CHUNK + tl.arange(0, CHUNK)
        valid = rows < T
        q = tl.load(q_ptr + rows[:, None] * D + cd[None, :], mask=valid[:, None], other=0.0)
        k = tl.load(k_ptr + rows[:, None] * D + cd[None, :], mask=valid[:, None], other=0.0)
        v = tl.load(v_ptr + rows[:, None] * DV + cv[None, :], mask=valid[:, None], other=0.0)
        o = tl.load(o_ptr + rows[:, None] * DV + cv[None, :], mask=valid[:, None], other=0.0).to(tl.float32)
        do = tl.load(do_ptr + rows[:, None] * DV + cv[None, :], mask=valid[:, None], other=0.0).to(tl.float32)
        den = tl.load(den_ptr + rows, mask=valid, other=1.0)
        phq = _soft_hash(q, wt, beta, P, L, P_PAD, L_PAD, R).to(v.dtype)
        phk = _soft_hash(k, wt, beta, P, L, P_PAD, L_PAD, R).to(v.dtype)
        dn = do / den[:, None]  # zero on padded rows, so they add nothing below
        dd = -tl.sum(do * o, axis=1) / den
        dv = tl.dot(phk.to(tl.float32), dsums)
        dphk = tl.dot(v.to(tl.float32), tl.trans(dsums)) + dcounts[None, :]
        if CAUSAL:
            a_t = tl.where(later, tl.dot(phk, tl.trans(phq)), 0.0)
            dv += tl.dot(a_t.to(v.dtype), dn.to(v.dtype))
            dp_t = tl.where(later, tl.dot(v, tl.trans(dn.to(v.dtype))) + dd[None, :], 0.0)
            dphk += tl.dot(dp_t.to(v.dtype), phq)
            phq32 = phq.to(tl.float32)
            dsums += tl.dot(tl.trans(phq32), dn)
            dcounts += tl.sum(phq32 * dd[:, None], axis=0)
        dk = _soft_hash_bwd(k, wt, dphk, beta, P, L, P_PAD, L_PAD, R)
        tl.store(dk_ptr + rows[:, None] * D + cd[None, :], dk.to(dk_ptr.dtype.element_ty), mask=valid[:, None])
        tl.store(dv_ptr + rows[:, None] * DV + cv[None, :], dv.to(dv_ptr.dtype.element_ty), mask=valid[:, None])


def race_bwd(do, q, k, v, w, o, den, sums, counts, beta=None, chunk=None, seg_chunks=0, causal=True):
    """(dq, dk, dv) from the forward's o, den and saved per-segment starting sums."""
    check_inputs(q, k, v, w)
    chunk = chunk or CHUNK
    q, k, v, o, do = (x.contiguous() for x in (q, k, v, o, do))
    b, h, t, d = q.shape
    dv_dim = v.shape[-1]
    beta = 1.0 / math.sqrt(d) if beta is None else float(beta)
    wt, consts = hash_layout(w)
    seg_len = segment_length(t, b * h, chunk, seg_chunks)
    n_seg = triton.cdiv(t, seg_len)
    if sums.shape[1] != n_seg:
        raise ValueError(f"saved state has {sums.shape[1]} segments, expected {n_seg}: same chunk/seg_chunks please")
    launch = dict(D=d, DV=dv_dim, CHUNK=chunk, num_warps=NUM_WARPS, num_stages=NUM_STAGES, **consts)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    _race_bwd_dq[(n_seg, b * h)](q, k, v, o, do, den, wt, sums, counts, dq, t, seg_len, n_seg, beta, CAUSAL=causal,
                                  **launch)
    dsums, dcounts = torch.zeros_like(sums), torch.zeros_like(counts)
    if n_seg > 1 or not causal:
        _race_bwd_segment_sums[(n_seg, b * h)](q, o, do, den, wt, dsums, dcounts, t, seg_len, n_seg, beta, **launch)
        # the reverse scan starts each segment from the sum over the segments after it
        dsums, dcounts = (starting_sums(x.flip(1), causal).flip(1).contiguous() for x in (dsums, dcounts))
    _race_bwd_dkdv[(n_seg, b * h)](q, k, v, o, do, den, wt, dsums, dcounts, dk, dv, t, seg_len, n_seg, beta,
                                    CAUSAL=causal, **launch)
    return dq, dk, dv
