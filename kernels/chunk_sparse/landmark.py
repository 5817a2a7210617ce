"""Seed for task `landmark_topn`: tile scores by tensor-core dots, then a sort-free top-N.

Kernel 1, one program per (query tile, sequence x KV head): the tile's queries of all G
query heads form one [G*S, D] block (one dot per block of landmarks, max over its rows),
written as a row of tile scores; the heaviest tiles (the last, with most chunks before
them) start first. Kernel 2, one program per row: a 32-step binary search over the
scores' order-preserving integer keys finds the N-th largest, then the chunks above it
(and the first ties) are written in ascending order through a prefix sum.
(Candidate modules are self-contained, so this repeats the threshold search of
kernels/hybrid_decode/topk.py, here for signed keys.) Semantics: baselines/chunk_sparse.py.
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _tile_scores_kernel(q_ptr, lmk_ptr, scores_ptr, T, Tq, n_tiles, n_chunks,
                        stride_qb, stride_qh, stride_qt, stride_lb, stride_lh, stride_lc,
                        HKV: tl.constexpr, G: tl.constexpr, S: tl.constexpr, S_ROWS: tl.constexpr,
                        ROWS: tl.constexpr, D: tl.constexpr, BLOCK_C: tl.constexpr, PRECISION: tl.constexpr):
    tile = n_tiles - 1 - tl.program_id(0)  # most work first
    bh = tl.program_id(1)
    b = bh // HKV
    h = bh % HKV
    q_start = T - Tq
    c = q_start // S + tile  # the tile's chunk number = chunks before it
    first = tl.maximum(c * S, q_start)
    end = tl.minimum(c * S + S, T)
    rows = tl.arange(0, ROWS)
    g = rows // S_ROWS
    pos = first + rows % S_ROWS
    live = (g < G) & (pos < end)
    offs_d = tl.arange(0, D)
    q = tl.load(q_ptr + b.to(tl.int64) * stride_qb + (h * G + g)[:, None] * stride_qh
                + (pos - q_start)[:, None].to(tl.int64) * stride_qt + offs_d[None, :], mask=live[:, None], other=0.0)
    row_out = scores_ptr + (bh.to(tl.int64) * n_tiles + tile) * n_chunks
    for j0 in range(0, c, BLOCK_C):
        j = j0 + tl.arange(0, BLOCK_C)
        lm = tl.load(lmk_ptr + b.to(tl.int64) * stride_lb + h * stride_lh + j[:, None] * stride_lc + offs_d[None, :],
                     mask=j[:, None] < c, other=0.0)
        s = tl.dot(q, tl.trans(lm), input_precision=PRECISION)
        s = tl.where(live[:, None], s, -float("inf"))
        tl.store(row_out + j, tl.max(s, 0), mask=j < c)


@triton.jit
def _topn_kernel(scores_ptr, out_ptr, T, Tq, n_tiles, n_chunks, top_n,
                 S: tl.constexpr, NC_PAD: tl.constexpr, N_PAD: tl.constexpr):
    tile = tl.program_id(0)
    bh = tl.program_id(1)
    c = (T - Tq) // S + tile
    row = bh.to(tl.int64) * n_tiles + tile
    j = tl.arange(0, NC_PAD)
    eligible = j < c
    s = tl.load(scores_ptr + row * n_chunks + j, mask=eligible, other=0.0)
    bits = s.to(tl.int32, bitcast=True)
    key = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)  # float order as signed int order
    key = tl.where(eligible, key.to(tl.int64) + 2147483648, -1)  # unsigned in [0, 2^32)
    want = tl.minimum(top_n, c)
    # Largest threshold with at least `want` keys at or above it.
    thr = tl.zeros([], tl.int64)
    for bit in tl.static_range(31, -1, -1):
        cand = thr | (1 << bit)
        count = tl.sum((key >= cand).to(tl.int32), 0)
        thr = tl.where(count >= want, cand, thr)
    above = key > thr
    ties = key == thr
    tie_rank = tl.cumsum(ties.to(tl.int32), 0)
    chosen = above | (ties & (tie_rank <= want - tl.sum(above.to(tl.int32), 0)))
    pos = tl.cumsum(chosen.to(tl.int32), 0) - 1
    out_row = out_ptr + row * top_n
    tl.store(out_row + pos, j, mask=chosen)
    r = tl.arange(0, N_PAD)
    tl.store(out_row + r, tl.full([N_PAD], -1, tl.int32), mask=(r >= want) & (r < top_n))


BLOCK_C = 64  # tunable: 32, 64, 128
SCORE_WARPS = 8  # tunable: 4, 8
TOPN_WARPS = 4  # tunable: 2, 4, 8


def landmark_topn(q, lmk, seq_len, chunk_size, top_n):
    """q [B, Hq, Tq, D], lmk [B, Hkv, T // S, D] -> [B, Hkv, NT, top_n] int32 (ascending, -1 padded)."""
    B, Hq, Tq, D = q.shape
    Hkv, NC = lmk.shape[1], lmk.shape[2]
    S, T = chunk_size, seq_len
    if Hq % Hkv or lmk.shape[3] != D or NC != T // S or Tq > T or S & (S - 1) or D & (D - 1) or top_n < 1:
        raise ValueError(f"landmark_topn: bad arguments q {tuple(q.shape)} lmk {tuple(lmk.shape)} "
                         f"seq_len {T} chunk_size {S} top_n {top_n}")
    if q.stride(-1) != 1 or lmk.stride(-1) != 1:
        raise ValueError("landmark_topn: the last dimension must be contiguous")
    G = Hq // Hkv
    c0 = (T - Tq) // S
    n_tiles = (T - 1) // S - c0 + 1
    s_rows = min(S, triton.next_power_of_2(Tq))
    rows = max(16, triton.next_power_of_2(G) * s_rows)
    scores = torch.empty((B * Hkv, n_tiles, max(NC, 1)), dtype=torch.float32, device=q.device)
    out = torch.empty((B, Hkv, n_tiles, top_n), dtype=torch.int32, device=q.device)
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    _tile_scores_kernel[(n_tiles, B * Hkv)](
        q, lmk, scores, T, Tq, n_tiles, max(NC, 1), q.stride(0), q.stride(1), q.stride(2),
        lmk.stride(0), lmk.stride(1), lmk.stride(2),
        HKV=Hkv, G=G, S=S, S_ROWS=s_rows, ROWS=rows, D=D, BLOCK_C=min(BLOCK_C, max(16, triton.next_power_of_2(NC))),
        PRECISION=precision, num_warps=SCORE_WARPS)
    _topn_kernel[(n_tiles, B * Hkv)](
        scores, out, T, Tq, n_tiles, max(NC, 1), top_n,
        S=S, NC_PAD=triton.next_power_of_2(max(NC, 1)), N_PAD=triton.next_power_of_2(top_n), num_warps=TOPN_WARPS)
    return out


def entry(q, lmk, seq_len, chunk_size, top_n):
    return landmark_topn(q, lmk, seq_len, chunk_size, top_n)
