"""RACE attention backward (global normalization), the same segment-parallel scans over the phi
the forward saved. Without causal masking the same kernels run with every segment starting
from the totals.

With a_tj = phi(q_t).phi(k_j) (j <= t), den_t = sum_j a_tj, o_t = sum_j a_tj v_j / den_t and
g = dL/do:  dn_t = g_t / den_t,  dd_t = -(g_t . o_t) / den_t,  dA_tj = dn_t . v_j + dd_t.
- dphi(q_t) = sum_{j<=t} dA_tj phi(k_j) = dn_t B_t^T + dd_t A_t: a forward scan that starts
  each segment from the prefix state the forward pass saved (`_race_bwd_dq`). On the way it
  sums the segment's D and E below and writes dd, so the reverse scan need not read o.
- dphi(k_j) = sum_{t>=j} dA_tj phi(q_t) = D_j v_j + E_j and dv_j = sum_{t>=j} a_tj dn_t
  = D_j^T phi(k_j), with D_j = sum_{t>=j} phi(q_t) dn_t^T and E_j = sum_{t>=j} dd_t phi(q_t):
  a reverse scan from the sums over the later segments (`_segment_prefix` with REVERSE), `_race_bwd_dkdv`.
- dq, dk from dphi (in the input dtype with DPHI_LOW, else fp32): `_race_hash_bwd`, every chunk of
  rows its own program, recomputing the hash: dL/dlog phi = dphi * phi goes back through HM to
  beta t and log 2cosh(beta t) (whose derivative is tanh), then through tanh and W. Out of the
  scans: there every step of a program's chain of chunks counts.
Given den and phi, all of it is linear in g's value columns, dd included (a sum over them), so
one program per block of BWD_BLOCK_V value columns does each scan with that block's share of dd
and of E, and writes its share of dphi: smaller states and tiles, twice the programs; the hash
backward adds the shares. 1/den scales rows or columns of the products, so g stays in bf16.
The hyperplanes get no gradient: they are RACE's fixed random projections.
"""
import math

import torch
import triton
import triton.language as tl

from kernels.race import chunk_fwd
from kernels.race.chunk_fwd import (_dot_hl, _dot_lh, _hash_logits, _load_start, _load_wt, by_width, check_inputs,
                                    hash_layout, segment_length, segment_prefix, starting_sums)

BWD_WARPS = 4  # 8 measured 1.5-1.7x slower (docs/benchmarks/linear.md)
BWD_BLOCK_V = 128  # 64: twice the programs, half the state each
BWD_BLOCK_V_WIDE = 64  # the same at S >= 64 ((4,4)), where a block of 128 spills
DPHI_LOW = True  # dL/dphi between the scans and the hash backward in the input dtype (else fp32)


@triton.jit
def _race_hash_bwd(x_ptr, w_ptr, hm_ptr, dphi_ptr, dx_ptr, T, beta, D: tl.constexpr, ROWS: tl.constexpr,
                   S: tl.constexpr, P: tl.constexpr, L: tl.constexpr, P_PAD: tl.constexpr, L_PAD: tl.constexpr,
                   R: tl.constexpr, PARTS: tl.constexpr):
    """dL/dx for ROWS rows from dL/dphi (fp32, the sum of PARTS partial sums), recomputing the hash of x."""
    blk, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    cd, cs = tl.arange(0, D), tl.arange(0, S)
    rows = blk * ROWS + tl.arange(0, ROWS)
    valid = rows < T
    HW: tl.constexpr = P_PAD * L_PAD
    wt = _load_wt(w_ptr, D, P, L, P_PAD, L_PAD)
    hm = tl.load(hm_ptr + tl.arange(0, 2 * HW)[:, None] * S + cs[None, :]).to(x_ptr.dtype.element_ty)
    x = tl.load(x_ptr + bh * T * D + rows[:, None] * D + cd[None, :], mask=valid[:, None], other=0.0)
    dphi = tl.zeros((ROWS, S), tl.float32)
    for part in tl.static_range(PARTS):
        offs = (part * tl.num_programs(1) + bh) * T * S + rows[:, None] * S + cs[None, :]
        dphi += tl.load(dphi_ptr + offs, mask=valid[:, None], other=0.0).to(tl.float32)
    t, z, logits = _hash_logits(x, wt.to(x.dtype), hm, beta)
    g = tl.where(cs[None, :] < L * R, dphi * tl.exp(logits), 0.0)  # dL/dlog phi
    gz, glc = tl.split(tl.reshape(_dot_lh(g, tl.trans(hm)), (ROWS, HW, 2)))
    tanh_z = 1.0 - 2.0 / (tl.exp(2.0 * z) + 1.0)
    du = beta * (gz + glc * tanh_z) * (1.0 - t * t)
    dx = tl.dot(du, tl.trans(wt))
    tl.store(dx_ptr + bh * T * D + rows[:, None] * D + cd[None, :], dx.to(dx_ptr.dtype.element_ty),
             mask=valid[:, None])


@triton.jit
def _race_bwd_dq(phq_ptr, phk_ptr, v_ptr, o_ptr, do_ptr, den_ptr, state_ptr, dphq_ptr, dd_ptr,
                 dsums_ptr, dcounts_ptr, T, seg_len, n_seg, DV: tl.constexpr, BV: tl.constexpr, S: tl.constexpr,
                 CHUNK: tl.constexpr, CAUSAL: tl.constexpr):
    # program (value block, segment, batch*head); its dphi(q), dd, D^T rows and E are the value
    # block's share, summed later (see the module docstring)
    vb, seg, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    part = vb * tl.num_programs(2) + bh  # (value block, batch*head) of the partial outputs
    phq_ptr += bh * T * S
    phk_ptr += bh * T * S
    dphq_ptr += part * T * S
    v_ptr += bh * T * DV
    o_ptr += bh * T * DV
    do_ptr += bh * T * DV
    den_ptr += bh * T
    dd_ptr += part * T
    cv, cs = vb * BV + tl.arange(0, BV), tl.arange(0, S)
    state = bh * n_seg + seg
    sums, counts = _load_start(state_ptr, bh, seg, n_seg, cv, cs, DV, S, CAUSAL)  # rows of B^T, A before the segment
    dsums = tl.zeros((BV, S), tl.float32)  # rows of the segment's D^T
    dcounts = tl.zeros((S,), tl.float32)  # the block's share of the segment's E
    causal = tl.arange(0, CHUNK)[:, None] >= tl.arange(0, CHUNK)[None, :]
    for start in range(seg * seg_len, tl.minimum(T, (seg + 1) * seg_len), CHUNK):
        rows = start + tl.arange(0, CHUNK)
        valid = rows < T
        phq = tl.load(phq_ptr + rows[:, None] * S + cs[None, :], mask=valid[:, None], other=0.0)
        o = tl.load(o_ptr + rows[:, None] * DV + cv[None, :], mask=valid[:, None], other=0.0)
        do = tl.load(do_ptr + rows[:, None] * DV + cv[None, :], mask=valid[:, None], other=0.0)
        rden = 1.0 / tl.load(den_ptr + rows, mask=valid, other=1.0)
        dd = -tl.sum(do.to(tl.float32) * o.to(tl.float32), axis=1) * rden  # zero on padded rows, as do is
        tl.store(dd_ptr + rows, dd, mask=valid)
        phq32 = phq.to(tl.float32)
        dsums += _dot_hl(tl.trans(do), phq32 * rden[:, None])
        dcounts += tl.sum(phq32 * dd[:, None], axis=0)
        dphq = _dot_hl(do, sums) * rden[:, None] + dd[:, None] * counts[None, :]
        if CAUSAL:
            phk = tl.load(phk_ptr + rows[:, None] * S + cs[None, :], mask=valid[:, None], other=0.0)
            v = tl.load(v_ptr + rows[:, None] * DV + cv[None, :], mask=valid[:, None], other=0.0)
            dp = tl.where(causal, tl.dot(do, tl.trans(v)) * rden[:, None] + dd[:, None], 0.0)
            dphq += tl.dot(dp.to(v.dtype), phk)
            sums += tl.dot(tl.trans(v), phk)
            counts += tl.sum(phk.to(tl.float32), axis=0)
        tl.store(dphq_ptr + rows[:, None] * S + cs[None, :], dphq.to(dphq_ptr.dtype.element_ty), mask=valid[:, None])
    tl.store(dsums_ptr + state * DV * S + cv[:, None] * S + cs[None, :], dsums)
    tl.store(dcounts_ptr + (part * n_seg + seg) * S + cs, dcounts)


@triton.jit
def _race_bwd_dkdv(phq_ptr, phk_ptr, v_ptr, do_ptr, den_ptr, dd_ptr, dsums_ptr, dcounts_ptr, dphk_ptr, dv_ptr,
                   T, seg_len, n_seg, DV: tl.constexpr, BV: tl.constexpr, S: tl.constexpr, CHUNK: tl.constexpr,
                   CAUSAL: tl.constexpr):
    vb, seg, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    part = vb * tl.num_programs(2) + bh
    phq_ptr += bh * T * S
    phk_ptr += bh * T * S
    dphk_ptr += part * T * S
    v_ptr += bh * T * DV
    do_ptr += bh * T * DV
    dv_ptr += bh * T * DV
    den_ptr += bh * T
    dd_ptr += part * T
    cv, cs = vb * BV + tl.arange(0, BV), tl.arange(0, S)
    state = bh * n_seg + seg
    dsums = tl.load(dsums_ptr + state * DV * S + cv[:, None] * S + cs[None, :])  # rows of D^T over later segments
    dcounts = tl.load(dcounts_ptr + (part * n_seg + seg) * S + cs)  # the block's share of E over later segments
    later = tl.arange(0, CHUNK)[:, None] <= tl.arange(0, CHUNK)[None, :]  # row j, column t >= j
    seg_start = seg * seg_len
    n_chunks = tl.cdiv(tl.minimum(T, seg_start + seg_len) - seg_start, CHUNK)
    for c in range(n_chunks):
        rows = seg_start + (n_chunks - 1 - c) * CHUNK + tl.arange(0, CHUNK)
        valid = rows < T
        phk = tl.load(phk_ptr + rows[:, None] * S + cs[None, :], mask=valid[:, None], other=0.0)
        v = tl.load(v_ptr + rows[:, None] * DV + cv[None, :], mask=valid[:, None], other=0.0)
        dv = _dot_hl(phk, tl.trans(dsums))
        dphk = _dot_hl(v, dsums) + dcounts[None, :]
        if CAUSAL:
            phq = tl.load(phq_ptr + rows[:, None] * S + cs[None, :], mask=valid[:, None], other=0.0)
            do = tl.load(do_ptr + rows[:, None] * DV + cv[None, :], mask=valid[:, None], other=0.0)
            rden = 1.0 / tl.load(den_ptr + rows, mask=valid, other=1.0)
            dd = tl.load(dd_ptr + rows, mask=valid, other=0.0)
            a_t = tl.where(later, tl.dot(phk, tl.trans(phq)) * rden[None, :], 0.0)  # a_tj / den_t
            dv += tl.dot(a_t.to(v.dtype), do)
            dp_t = tl.where(later, tl.dot(v, tl.trans(do)) * rden[None, :] + dd[None, :], 0.0)
            dphk += tl.dot(dp_t.to(v.dtype), phq)
            phq32 = phq.to(tl.float32)
            dsums += _dot_hl(tl.trans(do), phq32 * rden[:, None])
            dcounts += tl.sum(phq32 * dd[:, None], axis=0)
        tl.store(dphk_ptr + rows[:, None] * S + cs[None, :], dphk.to(dphk_ptr.dtype.element_ty), mask=valid[:, None])
        tl.store(dv_ptr + rows[:, None] * DV + cv[None, :], dv.to(dv_ptr.dtype.element_ty), mask=valid[:, None])


def hash_bwd(x, dphi, w32, hm, consts, beta):
    """dL/dx from dL/dphi (parts, B, H, T, S), summed over its first dim, by `_race_hash_bwd`."""
    b, h, t, d = x.shape
    dx = torch.empty_like(x)
    rows = min(chunk_fwd.HASH_ROWS, max(16, triton.next_power_of_2(t)))
    s = dphi.shape[-1]
    _race_hash_bwd[(triton.cdiv(t, rows), b * h)](x, w32, hm, dphi, dx, t, beta, D=d, ROWS=rows, S=s, **consts,
                                                  PARTS=dphi.shape[0],
                                                  num_warps=by_width(s, chunk_fwd.HASH_WARPS, chunk_fwd.HASH_WARPS_WIDE))
    return dx


def race_bwd(do, q, k, v, w, o, den, state, phq, phk, beta=None, chunk=None, seg_chunks=0, causal=True):
    """(dq, dk, dv) from the forward's o, den, saved per-segment prefix sums (`race_fwd`'s state) and phi."""
    check_inputs(q, k, v, w)
    chunk = chunk or chunk_fwd.CHUNK
    q, k, v, o, do = (x.contiguous() for x in (q, k, v, o, do))
    b, h, t, d = q.shape
    dv_dim, s = v.shape[-1], phq.shape[-1]
    beta = 1.0 / math.sqrt(d) if beta is None else float(beta)
    w32, hm, consts = hash_layout(w)
    seg_len = segment_length(t, b * h, chunk, seg_chunks, s)
    n_seg = triton.cdiv(t, seg_len)
    if state.shape[1] != n_seg:
        raise ValueError(f"saved state has {state.shape[1]} segments, expected {n_seg}: same chunk/seg_chunks please")
    bv = min(by_width(s, BWD_BLOCK_V, BWD_BLOCK_V_WIDE), dv_dim)
    nv = dv_dim // bv
    launch = dict(DV=dv_dim, BV=bv, S=s, CHUNK=chunk, num_warps=BWD_WARPS,
                  num_stages=by_width(s, chunk_fwd.NUM_STAGES, chunk_fwd.NUM_STAGES_WIDE))
    grid = (nv, n_seg, b * h)
    # the value blocks' partial dphi, dd and E (see the module docstring)
    dphi_dtype = q.dtype if DPHI_LOW else torch.float32
    dphq, dphk = (torch.empty(nv, b, h, t, s, device=q.device, dtype=dphi_dtype) for _ in range(2))
    dd = torch.empty(nv, b, h, t, device=q.device, dtype=torch.float32)
    dsums = torch.empty(b * h, n_seg, dv_dim, s, device=q.device, dtype=torch.float32)
    dcounts = torch.empty(nv * b * h, n_seg, s, device=q.device, dtype=torch.float32)
    dv = torch.empty_like(v)
    _race_bwd_dq[grid](phq, phk, v, o, do, den, state, dphq, dd, dsums, dcounts, t, seg_len, n_seg,
                       CAUSAL=causal, **launch)
    # the reverse scan starts each segment from the sum over the segments after it (all of them if not causal)
    if causal:
        dsums, dcounts = segment_prefix(dsums, reverse=True), segment_prefix(dcounts, reverse=True)
    else:
        dsums, dcounts = (starting_sums(x, causal, reverse=True) for x in (dsums, dcounts))
    _race_bwd_dkdv[grid](phq, phk, v, do, den, dd, dsums, dcounts, dphk, dv, t, seg_len, n_seg, CAUSAL=causal,
                         **launch)
    return hash_bwd(q, dphq, w32, hm, consts, beta), hash_bwd(k, dphk, w32, hm, consts, beta), dv
