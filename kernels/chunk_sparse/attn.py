"""Seed for task `chunk_sparse_attn`: gathered chunk attention, chunk choice shared per tile.

One program per (query sub-tile of BLOCK_M rows, query head), the G query heads of a KV
head adjacent in the grid so that their loads of the same chunks hit L2. A tile's queries
all read the same N chunks, so each chunk is one dense [S, D] load and two tensor-core
dots; the per-chunk softmax is exact within the chunk (a chunk is one block) and the
chunks are mixed with an online softmax over their landmark scores. Causality needs no
mask: every chosen chunk lies wholly before the tile. Semantics: baselines/chunk_sparse.py.
"""
import math

import torch
import triton
import triton.language as tl


@triton.jit
def _chunk_attn_kernel(q_ptr, k_ptr, v_ptr, lmk_ptr, idx_ptr, o_ptr, qk_scale, T, Tq, n_tiles,
                       stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
                       stride_vb, stride_vh, stride_vt, stride_lb, stride_lh, stride_lc,
                       stride_ob, stride_oh, stride_ot,
                       HKV: tl.constexpr, G: tl.constexpr, S: tl.constexpr, SUBS: tl.constexpr,
                       BLOCK_M: tl.constexpr, D: tl.constexpr, TOP_N: tl.constexpr, PRECISION: tl.constexpr):
    pid = tl.program_id(0)
    g = pid % G
    tile = pid // G // SUBS
    sub = pid // G % SUBS
    b = tl.program_id(1) // HKV
    h = tl.program_id(1) % HKV
    hq = h * G + g
    q_start = T - Tq
    c = q_start // S + tile
    first = tl.maximum(c * S, q_start) + sub * BLOCK_M
    if first >= tl.minimum(c * S + S, T):
        return
    pos = first + tl.arange(0, BLOCK_M)
    live = pos < tl.minimum(c * S + S, T)
    offs_d = tl.arange(0, D)
    offs_s = tl.arange(0, S)
    b64 = b.to(tl.int64)
    q = tl.load(q_ptr + b64 * stride_qb + hq * stride_qh + (pos - q_start)[:, None].to(tl.int64) * stride_qt
                + offs_d[None, :], mask=live[:, None], other=0.0)
    m_w = tl.full([BLOCK_M], -1.0e30, tl.float32)  # running max of the chunk weights' logits
    z = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    idx_row = idx_ptr + ((b64 * HKV + h) * n_tiles + tile) * TOP_N
    for n in range(TOP_N):
        ci = tl.load(idx_row + n)
        have = ci >= 0
        n_rows = tl.where(have, S, 0)  # a -1 slot loads nothing (vector masks: the interpreter needs them)
        n_cols = tl.where(have, D, 0)
        ci = tl.maximum(ci, 0).to(tl.int64)
        kc = tl.load(k_ptr + b64 * stride_kb + h * stride_kh + (ci * S + offs_s)[:, None] * stride_kt + offs_d[None, :],
                     mask=offs_s[:, None] < n_rows, other=0.0)
        vc = tl.load(v_ptr + b64 * stride_vb + h * stride_vh + (ci * S + offs_s)[:, None] * stride_vt + offs_d[None, :],
                     mask=offs_s[:, None] < n_rows, other=0.0)
        lm = tl.load(lmk_ptr + b64 * stride_lb + h * stride_lh + ci * stride_lc + offs_d, mask=offs_d < n_cols, other=0.0)
        s = tl.dot(q, tl.trans(kc), input_precision=PRECISION) * qk_scale
        p = tl.exp2(s - tl.max(s, 1)[:, None])
        o_chunk = tl.dot(p.to(vc.dtype), vc, input_precision=PRECISION) / tl.sum(p, 1)[:, None]
        w = tl.sum(q.to(tl.float32) * lm.to(tl.float32)[None, :], 1) * qk_scale
        w = tl.where(have, w, -float("inf"))
        m_new = tl.maximum(m_w, w)
        alpha = tl.exp2(m_w - m_new)
        beta = tl.exp2(w - m_new)
        z = z * alpha + beta
        acc = acc * alpha[:, None] + beta[:, None] * o_chunk
        m_w = m_new
    out = acc / tl.where(z > 0, z, 1.0)[:, None]
    tl.store(o_ptr + b64 * stride_ob + hq * stride_oh + (pos - q_start)[:, None].to(tl.int64) * stride_ot
             + offs_d[None, :], out.to(o_ptr.dtype.element_ty), mask=live[:, None])


BLOCK_M = 64  # tunable: 16, 32, 64, 128
NUM_WARPS = 4  # tunable: 2, 4, 8
NUM_STAGES = 2  # tunable: 1, 2, 3, 4


def chunk_sparse_attn(q, k, v, lmk, indices, chunk_size):
    """q [B, Hq, Tq, D], k/v [B, Hkv, T, D], lmk [B, Hkv, T//S, D], indices [B, Hkv, NT, N] -> [B, Hq, Tq, D]."""
    B, Hq, Tq, D = q.shape
    Hkv, T = k.shape[1], k.shape[2]
    S = chunk_size
    c0 = (T - Tq) // S
    n_tiles = (T - 1) // S - c0 + 1
    if (Hq % Hkv or v.shape != k.shape or k.shape[3] != D or lmk.shape[:2] != k.shape[:2] or Tq > T
            or indices.shape[:3] != (B, Hkv, n_tiles) or S & (S - 1) or S < 16 or D & (D - 1)):
        raise ValueError(f"chunk_sparse_attn: bad shapes q {tuple(q.shape)} k {tuple(k.shape)} v {tuple(v.shape)} "
                         f"lmk {tuple(lmk.shape)} indices {tuple(indices.shape)} chunk_size {S} "
                         "(S and D powers of two, S >= 16)")
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1 or lmk.stride(-1) != 1:
        raise ValueError("chunk_sparse_attn: the last dimension must be contiguous")
    indices = indices.contiguous()
    G = Hq // Hkv
    block_m = min(BLOCK_M, S, max(16, triton.next_power_of_2(Tq)))
    subs = S // block_m
    o = torch.empty_like(q)
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    _chunk_attn_kernel[(n_tiles * subs * G, B * Hkv)](
        q, k, v, lmk, indices, o, math.log2(math.e) / math.sqrt(D), T, Tq, n_tiles,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), lmk.stride(0), lmk.stride(1), lmk.stride(2),
        o.stride(0), o.stride(1), o.stride(2),
        HKV=Hkv, G=G, S=S, SUBS=subs, BLOCK_M=block_m, D=D, TOP_N=indices.shape[3], PRECISION=precision,
        num_warps=NUM_WARPS, num_stages=NUM_STAGES)
    return o


def entry(q, k, v, lmk, indices, chunk_size):
    return chunk_sparse_attn(q, k, v, lmk, indices, chunk_size)
