"""Seed for task `sliding_window_attn`: flash attention over a causal window only.

One program per (block of BLOCK_M queries, query head), query heads of a KV head adjacent
in the grid; it walks only the key blocks that intersect the window of its queries
(about (window + BLOCK_M) / BLOCK_N of them, whatever T is) with an online softmax.
Semantics: baselines/chunk_sparse.py, sliding_window_attn.
"""
import math

import torch
import triton
import triton.language as tl


@triton.jit
def _window_attn_kernel(q_ptr, k_ptr, v_ptr, o_ptr, qk_scale, T, Tq, window,
                        stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
                        stride_vb, stride_vh, stride_vt, stride_ob, stride_oh, stride_ot,
                        HKV: tl.constexpr, G: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        D: tl.constexpr, PRECISION: tl.constexpr):
    pid = tl.program_id(0)
    g = pid % G
    m_block = pid // G
    b = tl.program_id(1) // HKV
    h = tl.program_id(1) % HKV
    hq = h * G + g
    b64 = b.to(tl.int64)
    q_start = T - Tq
    rows = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
    pos = q_start + rows
    live = rows < Tq
    offs_d = tl.arange(0, D)
    q = tl.load(q_ptr + b64 * stride_qb + hq * stride_qh + rows[:, None].to(tl.int64) * stride_qt + offs_d[None, :],
                mask=live[:, None], other=0.0)
    m = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    first_pos = q_start + m_block * BLOCK_M
    lo = tl.maximum(first_pos - window + 1, 0) // BLOCK_N * BLOCK_N
    hi = tl.minimum(first_pos + BLOCK_M, T)
    k_base = k_ptr + b64 * stride_kb + h * stride_kh
    v_base = v_ptr + b64 * stride_vb + h * stride_vh
    for start in range(lo, hi, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        kt = tl.load(k_base + cols[:, None].to(tl.int64) * stride_kt + offs_d[None, :], mask=cols[:, None] < T, other=0.0)
        vt = tl.load(v_base + cols[:, None].to(tl.int64) * stride_vt + offs_d[None, :], mask=cols[:, None] < T, other=0.0)
        s = tl.dot(q, tl.trans(kt), input_precision=PRECISION) * qk_scale
        seen = (cols[None, :] <= pos[:, None]) & (cols[None, :] > pos[:, None] - window)
        s = tl.where(seen, s, -float("inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m - m_new)
        l = l * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt, input_precision=PRECISION)
        m = m_new
    out = acc / tl.where(l > 0, l, 1.0)[:, None]
    tl.store(o_ptr + b64 * stride_ob + hq * stride_oh + rows[:, None].to(tl.int64) * stride_ot + offs_d[None, :],
             out.to(o_ptr.dtype.element_ty), mask=live[:, None])


BLOCK_M = 128  # tunable: 16, 32, 64, 128
BLOCK_N = 64  # tunable: 32, 64, 128
NUM_WARPS = 8  # tunable: 4, 8
NUM_STAGES = 3  # tunable: 1, 2, 3, 4


def sliding_window_attn(q, k, v, window):
    """q [B, Hq, Tq, D] at positions T-Tq .. T-1, k/v [B, Hkv, T, D] -> [B, Hq, Tq, D]."""
    B, Hq, Tq, D = q.shape
    Hkv, T = k.shape[1], k.shape[2]
    if Hq % Hkv or v.shape != k.shape or k.shape[3] != D or Tq > T or D & (D - 1) or window < 1:
        raise ValueError(f"sliding_window_attn: bad arguments q {tuple(q.shape)} k {tuple(k.shape)} "
                         f"v {tuple(v.shape)} window {window} (D a power of two, window >= 1)")
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("sliding_window_attn: the last dimension must be contiguous")
    G = Hq // Hkv
    block_m = min(BLOCK_M, max(16, triton.next_power_of_2(Tq)))
    block_n = min(BLOCK_N, max(16, triton.next_power_of_2(T)))
    o = torch.empty_like(q)
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    _window_attn_kernel[(triton.cdiv(Tq, block_m) * G, B * Hkv)](
        q, k, v, o, math.log2(math.e) / math.sqrt(D), T, Tq, window,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
        HKV=Hkv, G=G, BLOCK_M=block_m, BLOCK_N=block_n, D=D, PRECISION=precision,
        num_warps=NUM_WARPS, num_stages=NUM_STAGES)
    return o


def entry(q, k, v, window):
    return sliding_window_attn(q, k, v, window)
