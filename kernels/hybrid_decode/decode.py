"""Seed for task `hybrid_decode`: retrieval and sparse heads in one split-KV launch.

Work unit = (sequence, KV head, split of BLOCKS_PER_SPLIT pages). A retrieval head walks
all of its sequence's pages, a sparse head only the pages in its inherited block set, so a
retrieval head gets many splits and a sparse head few; every split does the same amount
of work, and the GPU's scheduler spreads them evenly (splits past a head's work exit at
once; small batches get smaller splits). Each split walks its pages TILE_PAGES at a
time and keeps an online softmax for the G query heads of its KV head (one load serves
all of them, through one [G_PAD, TILE_PAGES * P] dot) and writes a partial (o, lse); for
retrieval heads it also writes each page's log-sum-exp. A second kernel merges the splits
(SPLIT_CHUNK at a time) and turns page log-sum-exps into block scores (attention mass per
block). H200 numbers and what limits them: docs/benchmarks/sparse.md.
Layout and semantics: baselines/hybrid_decode.py.
"""
import math

import torch
import triton
import triton.language as tl


@triton.jit
def _split_kernel(
    q_ptr, k_ptr, v_ptr, block_table_ptr, seq_lens_ptr, is_retrieval_ptr, indices_ptr,
    o_part_ptr, lse_part_ptr, block_lse_ptr,
    qk_scale,  # log2(e) / sqrt(D): scores in base 2
    stride_qb, stride_qh, stride_kp, stride_kh, stride_kt, stride_vp, stride_vh, stride_vt,
    stride_tb, stride_ib, stride_ih,
    n_slots, max_blocks, n_splits,
    HKV: tl.constexpr, G: tl.constexpr, G_PAD: tl.constexpr, P: tl.constexpr, D: tl.constexpr,
    BLOCKS_PER_SPLIT: tl.constexpr, TILE_PAGES: tl.constexpr, SCORES: tl.constexpr, PRECISION: tl.constexpr,
):
    split = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HKV
    h = bh % HKV
    seq_len = tl.load(seq_lens_ptr + b)
    n_blocks = tl.cdiv(seq_len, P)
    role = tl.load(is_retrieval_ptr + h)
    retrieval = role != 0
    sparse = role == 0
    n_work = tl.where(retrieval, n_blocks, tl.minimum(n_slots, n_blocks))
    first = split * BLOCKS_PER_SPLIT
    if first >= n_work:
        return

    offs_g = tl.arange(0, G_PAD)
    offs_d = tl.arange(0, D)
    rows = tl.arange(0, TILE_PAGES * P)  # a tile = TILE_PAGES pages, one dot for all of them
    row_page = rows // P
    row_tok = rows % P
    q = tl.load(q_ptr + b * stride_qb + (h * G + offs_g)[:, None] * stride_qh + offs_d[None, :],
                mask=offs_g[:, None] < G, other=0.0)
    m = tl.full([G_PAD], -1.0e30, tl.float32)  # finite: a fully masked tile leaves no NaN
    l = tl.zeros([G_PAD], tl.float32)
    acc = tl.zeros([G_PAD, D], tl.float32)
    last = tl.minimum(first + BLOCKS_PER_SPLIT, n_work)
    sparse_end = tl.where(sparse, last, 0)  # sparse heads look their blocks up, retrieval heads count
    index_row = indices_ptr + b * stride_ib + h * stride_ih
    for t0 in range(first, last, TILE_PAGES):
        slot = t0 + row_page
        blk = tl.load(index_row + slot, mask=slot < sparse_end, other=-1)
        blk = tl.where(slot < sparse_end, blk, slot)
        page = tl.load(block_table_ptr + b * stride_tb + tl.maximum(blk, 0), mask=slot < last, other=0).to(tl.int64)
        tok = blk * P + row_tok
        live = (slot < last) & (tok >= 0) & (tok < seq_len)  # blk = -1: no block
        kt = tl.load(k_ptr + page[:, None] * stride_kp + h * stride_kh + row_tok[:, None] * stride_kt + offs_d[None, :],
                     mask=live[:, None], other=0.0)
        vt = tl.load(v_ptr + page[:, None] * stride_vp + h * stride_vh + row_tok[:, None] * stride_vt + offs_d[None, :],
                     mask=live[:, None], other=0.0)
        s = tl.dot(q, tl.trans(kt), input_precision=PRECISION) * qk_scale
        s = tl.where(live[None, :], s, -float("inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m - m_new)
        l = l * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt, input_precision=PRECISION)
        m = m_new
        if SCORES:
            if retrieval:  # each page's log-sum-exp, for the block scores
                page_sum = tl.sum(tl.reshape(p, [G_PAD, TILE_PAGES, P]), 2)
                blocks = t0 + tl.arange(0, TILE_PAGES)
                tl.store(block_lse_ptr + (bh * G + offs_g)[:, None] * max_blocks + blocks[None, :],
                         m_new[:, None] + tl.log2(page_sum), mask=(offs_g[:, None] < G) & (blocks[None, :] < last))
    part = bh * n_splits + split
    l_safe = tl.where(l > 0, l, 1.0)
    tl.store(o_part_ptr + (part * G + offs_g)[:, None] * D + offs_d[None, :], acc / l_safe[:, None],
             mask=offs_g[:, None] < G)
    tl.store(lse_part_ptr + part * G + offs_g, m + tl.log2(l), mask=offs_g < G)


@triton.jit
def _merge_kernel(
    o_part_ptr, lse_part_ptr, block_lse_ptr, seq_lens_ptr, is_retrieval_ptr, o_ptr, scores_ptr,
    stride_ob, stride_oh, stride_sb, stride_sh,
    n_slots, max_blocks, n_splits,
    HKV: tl.constexpr, G: tl.constexpr, G_PAD: tl.constexpr, P: tl.constexpr, D: tl.constexpr,
    BLOCKS_PER_SPLIT: tl.constexpr, SCORES: tl.constexpr, SCORE_BLOCK: tl.constexpr, SPLIT_CHUNK: tl.constexpr,
):
    bh = tl.program_id(0)
    b = bh // HKV
    h = bh % HKV
    seq_len = tl.load(seq_lens_ptr + b)
    n_blocks = tl.cdiv(seq_len, P)
    retrieval = tl.load(is_retrieval_ptr + h) != 0
    n_work = tl.where(retrieval, n_blocks, tl.minimum(n_slots, n_blocks))
    offs_g = tl.arange(0, G_PAD)
    offs_d = tl.arange(0, D)
    gmask = offs_g < G
    # SPLIT_CHUNK splits at a time (many loads in flight): a long retrieval head has hundreds.
    n_used = tl.cdiv(n_work, BLOCKS_PER_SPLIT)
    offs_s = tl.arange(0, SPLIT_CHUNK)
    m = tl.full([G_PAD], -float("inf"), tl.float32)
    for s0 in range(0, n_used, SPLIT_CHUNK):
        sp = s0 + offs_s
        lse = tl.load(lse_part_ptr + ((bh * n_splits + sp) * G)[:, None] + offs_g[None, :],
                      mask=(sp[:, None] < n_used) & gmask[None, :], other=-float("inf"))
        m = tl.maximum(m, tl.max(lse, 0))
    m = tl.where(m == -float("inf"), 0.0, m)  # a head with no token at all
    l = tl.zeros([G_PAD], tl.float32)
    acc = tl.zeros([G_PAD, D], tl.float32)
    for s0 in range(0, n_used, SPLIT_CHUNK):
        sp = s0 + offs_s
        live = (sp[:, None] < n_used) & gmask[None, :]
        w = tl.exp2(tl.load(lse_part_ptr + ((bh * n_splits + sp) * G)[:, None] + offs_g[None, :],
                            mask=live, other=-float("inf")) - m[None, :])  # [SPLIT_CHUNK, G_PAD]
        o = tl.load(o_part_ptr + (((bh * n_splits + sp) * G)[:, None, None] + offs_g[None, :, None]) * D
                    + offs_d[None, None, :], mask=live[:, :, None], other=0.0)
        l += tl.sum(w, 0)
        acc += tl.sum(w[:, :, None] * o, 0)
    l_safe = tl.where(l > 0, l, 1.0)
    tl.store(o_ptr + b * stride_ob + (h * G + offs_g)[:, None] * stride_oh + offs_d[None, :],
             (acc / l_safe[:, None]).to(o_ptr.dtype.element_ty), mask=gmask[:, None])
    if SCORES:
        # Block mass = sum over the G query heads of 2^(block lse - head lse).
        lse_total = tl.where(gmask & (l > 0), m + tl.log2(l_safe), 0.0)  # padded heads add 2^-inf = 0
        scored = tl.where(retrieval, n_blocks, 0)  # sparse heads score 0 everywhere
        for j0 in range(0, max_blocks, SCORE_BLOCK):
            j = j0 + tl.arange(0, SCORE_BLOCK)
            have = j < scored
            blse = tl.load(block_lse_ptr + (bh * G + offs_g)[:, None] * max_blocks + j[None, :],
                           mask=gmask[:, None] & have[None, :], other=-float("inf"))
            mass = tl.sum(tl.exp2(blse - lse_total[:, None]), 0)
            tl.store(scores_ptr + b * stride_sb + h * stride_sh + j, mass, mask=j < max_blocks)


BLOCKS_PER_SPLIT = 32  # tunable: 8, 16, 32, 64, 128
TILE_PAGES = 2  # tunable: 1, 2, 4
NUM_WARPS = 4  # tunable: 2, 4, 8
NUM_STAGES = 2  # tunable: 1, 2, 3, 4
SCORE_BLOCK = 1024  # tunable: 256, 512, 1024, 2048
SPLIT_CHUNK = 16  # tunable: 4, 8, 16, 32


def split_size(batch, max_blocks, device):
    """Pages per split: BLOCKS_PER_SPLIT, smaller when one retrieval head per sequence would
    not give about two programs per multiprocessor (small batches, short contexts)."""
    n_sm = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    want = triton.next_power_of_2(triton.cdiv(batch * max_blocks, 2 * n_sm))
    return max(TILE_PAGES, min(BLOCKS_PER_SPLIT, want) // TILE_PAGES * TILE_PAGES)


def hybrid_decode(q, k_cache, v_cache, block_table, seq_lens, is_retrieval, indices, scores=True):
    """Returns (o [B, Hq, D], scores [B, Hkv, max_blocks] fp32, or None when scores=False)."""
    B, Hq, D = q.shape
    n_pages, Hkv, P, Dk = k_cache.shape
    if Dk != D or Hq % Hkv or v_cache.shape != k_cache.shape or D & (D - 1) or P & (P - 1) or P < 16:
        raise ValueError(f"hybrid_decode: bad shapes q {tuple(q.shape)} k_cache {tuple(k_cache.shape)} "
                         f"v_cache {tuple(v_cache.shape)} (D and P must be powers of two, P >= 16)")
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("hybrid_decode: the cache's last dimension must be contiguous")
    q = q.contiguous()
    block_table = block_table.contiguous()
    indices = indices.contiguous()
    G = Hq // Hkv
    max_blocks = block_table.shape[1]
    n_slots = indices.shape[-1]
    bps = split_size(B, max_blocks, q.device)
    n_splits = triton.cdiv(max_blocks, bps)
    dev = q.device
    o = torch.empty_like(q)
    o_part = torch.empty((B * Hkv * n_splits, G, D), dtype=torch.float32, device=dev)
    lse_part = torch.empty((B * Hkv * n_splits, G), dtype=torch.float32, device=dev)
    block_lse = torch.empty((B * Hkv, G, max_blocks) if scores else (1,), dtype=torch.float32, device=dev)
    out_scores = torch.empty((B, Hkv, max_blocks) if scores else (1, 1, 1), dtype=torch.float32, device=dev)
    G_PAD = max(16, triton.next_power_of_2(G))  # tl.dot needs 16 rows
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    _split_kernel[(n_splits, B * Hkv)](
        q, k_cache, v_cache, block_table, seq_lens, is_retrieval, indices, o_part, lse_part, block_lse,
        math.log2(math.e) / math.sqrt(D),
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_table.stride(0),
        indices.stride(0), indices.stride(1), n_slots, max_blocks, n_splits,
        HKV=Hkv, G=G, G_PAD=G_PAD, P=P, D=D, BLOCKS_PER_SPLIT=bps, TILE_PAGES=TILE_PAGES,
        SCORES=scores, PRECISION=precision, num_warps=NUM_WARPS, num_stages=NUM_STAGES)
    _merge_kernel[(B * Hkv,)](
        o_part, lse_part, block_lse, seq_lens, is_retrieval, o, out_scores,
        o.stride(0), o.stride(1), out_scores.stride(0), out_scores.stride(1), n_slots, max_blocks, n_splits,
        HKV=Hkv, G=G, G_PAD=triton.next_power_of_2(G), P=P, D=D, BLOCKS_PER_SPLIT=bps,
        SCORES=scores, SCORE_BLOCK=min(SCORE_BLOCK, triton.next_power_of_2(max_blocks)),
        SPLIT_CHUNK=SPLIT_CHUNK, num_warps=4)
    return o, (out_scores if scores else None)


def dense_decode(q, k_cache, v_cache, block_table, seq_lens):
    """Split-KV GQA decode over the whole paged cache (every head a retrieval head, no scores)."""
    Hkv = k_cache.shape[1]
    roles = torch.ones(Hkv, dtype=torch.int32, device=q.device)
    no_blocks = torch.full((1, 1, 1), -1, dtype=torch.int32, device=q.device)
    return hybrid_decode(q, k_cache, v_cache, block_table, seq_lens, roles, no_blocks, scores=False)[0]


def entry(q, k_cache, v_cache, block_table, seq_lens, is_retrieval, indices):
    return hybrid_decode(q, k_cache, v_cache, block_table, seq_lens, is_retrieval, indices)
