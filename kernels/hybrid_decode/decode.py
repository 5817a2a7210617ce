"""Seed for task `hybrid_decode`: retrieval and sparse heads in one split-KV launch.

A retrieval head reads all of its sequence's pages, a sparse head only the pages of its
inherited block set. Lay every (sequence, KV head)'s pages end to end and cut that list
into one range of equal cost per program (PROGRAMS_PER_SM per multiprocessor, one wave;
a sparse head's page costs SPARSE_PAGE_COST / 8 of a retrieval head's, as its lookup goes
through the block set too): the work is balanced whatever the mix of heads, lengths and
budgets, and no program is launched only to exit. A program walks its range head segment
by head segment, TILE_PAGES pages at a time, keeping an online softmax for the G query
heads of the segment's KV head (one load serves all of them, through one
[G_PAD, TILE_PAGES * P] dot), and writes a partial (o, lse) per segment; for retrieval
heads it also writes each page's log-sum-exp. A second kernel merges each head's partials
(SPLIT_CHUNK at a time), and beside it one program per SCORE_BLOCK blocks of the head turns
page log-sum-exps into block scores (attention mass per block); on Hopper it is launched with
programmatic dependent launch (USE_PDL): its programs start as split programs finish and
wait for the split grid in the kernel (griddepcontrol), not behind a kernel boundary.
H200 numbers and what limits them: docs/benchmarks/sparse.md.
Layout and semantics: baselines/hybrid_decode.py.
"""
import math
import os

import torch
import triton
import triton.language as tl


@triton.jit
def _work_layout(seq_lens_ptr, is_retrieval_ptr, n_slots, n_heads, sparse_page_cost, HKV: tl.constexpr,
                 P: tl.constexpr, BH_PAD: tl.constexpr):
    """Every (sequence, KV head)'s pages laid end to end in (b, h) order, each costing 8 units
    (sparse_page_cost for a sparse head's page). Returns the head numbers, their page counts,
    the units per page and the running end of each head's units."""
    heads = tl.arange(0, BH_PAD)
    live = heads < n_heads
    n_blocks = tl.cdiv(tl.load(seq_lens_ptr + heads // HKV, mask=live, other=0), P)
    retrieval = tl.load(is_retrieval_ptr + heads % HKV, mask=live, other=0) != 0
    work = tl.where(retrieval, n_blocks, tl.minimum(n_blocks, n_slots))
    unit = tl.where(retrieval, 8, sparse_page_cost)
    return heads, work, unit, tl.cumsum(work * unit, 0)


@triton.jit
def _tile_pages(slot, block_table_row, index_row, sparse_end, last):
    """Block and page number of each row's page in a tile (slot = each row's slot in the head's
    list): retrieval heads read block = slot, sparse heads look it up (-1: no block)."""
    blk = tl.where(slot < sparse_end, tl.load(index_row + slot, mask=slot < sparse_end, other=-1), slot)
    page = tl.load(block_table_row + tl.maximum(blk, 0), mask=slot < last, other=0)
    return blk, page.to(tl.int64)


@triton.jit
def _split_kernel(
    q_ptr, k_ptr, v_ptr, block_table_ptr, seq_lens_ptr, is_retrieval_ptr, indices_ptr,
    o_part_ptr, lse_part_ptr, block_lse_ptr,
    qk_scale,  # log2(e) / sqrt(D): scores in base 2
    stride_qb, stride_qh, stride_kp, stride_kh, stride_kt, stride_vp, stride_vh, stride_vt,
    stride_tb, stride_ib, stride_ih,
    n_slots, max_blocks, n_heads, sparse_page_cost,
    HKV: tl.constexpr, G: tl.constexpr, G_PAD: tl.constexpr, P: tl.constexpr, D: tl.constexpr,
    BH_PAD: tl.constexpr, TILE_PAGES: tl.constexpr, SCORES: tl.constexpr, PRECISION: tl.constexpr,
    PDL: tl.constexpr,
):
    # Program pid takes the units [pid * per, (pid + 1) * per) of all heads' pages laid end to
    # end and reads the pages that start there.
    pid = tl.program_id(0)
    if PDL:  # the merge may be launched now (its programs wait for this grid to finish and flush)
        tl.extra.cuda.gdc_launch_dependents()
    heads, work, unit, ends = _work_layout(seq_lens_ptr, is_retrieval_ptr, n_slots, n_heads, sparse_page_cost,
                                           HKV, P, BH_PAD)
    per = tl.maximum(tl.cdiv(tl.max(ends, 0), tl.num_programs(0)), tl.max(unit, 0))  # >= 1 page
    pos = pid * per
    stop = tl.minimum(pos + per, tl.max(ends, 0))
    offs_g = tl.arange(0, G_PAD)
    offs_d = tl.arange(0, D)
    rows = tl.arange(0, TILE_PAGES * P)  # a tile = TILE_PAGES pages, one dot for all of them
    row_page = rows // P
    row_tok = rows % P
    while pos < stop:  # one segment per head that this program's range touches
        bh = tl.sum((ends <= pos).to(tl.int32), 0)
        head_end = tl.sum(tl.where(heads == bh, ends, 0), 0)
        head_unit = tl.sum(tl.where(heads == bh, unit, 0), 0)
        head_start = head_end - head_unit * tl.sum(tl.where(heads == bh, work, 0), 0)
        seg_end = tl.minimum(stop, head_end)
        first = tl.cdiv(pos - head_start, head_unit)
        last = tl.cdiv(seg_end - head_start, head_unit)
        b = bh // HKV
        h = bh % HKV
        seq_len = tl.load(seq_lens_ptr + b)
        retrieval = tl.load(is_retrieval_ptr + h) != 0
        sparse_end = tl.where(retrieval, 0, last)  # sparse heads look their blocks up, retrieval heads count
        q = tl.load(q_ptr + b * stride_qb + (h * G + offs_g)[:, None] * stride_qh + offs_d[None, :],
                    mask=offs_g[:, None] < G, other=0.0)
        m = tl.full([G_PAD], -1.0e30, tl.float32)  # finite: a fully masked tile leaves no NaN
        l = tl.zeros([G_PAD], tl.float32)
        acc = tl.zeros([G_PAD, D], tl.float32)
        table_row = block_table_ptr + b * stride_tb
        index_row = indices_ptr + b * stride_ib + h * stride_ih
        # Each tile looks up the next tile's pages: the K/V loads then depend on no load of their
        # own iteration, and the pipeliner can issue them ahead (double-buffered at 3 stages).
        blk, page = _tile_pages(first + row_page, table_row, index_row, sparse_end, last)
        for t0 in range(first, last, TILE_PAGES):
            slot = t0 + row_page
            next_blk, next_page = _tile_pages(slot + TILE_PAGES, table_row, index_row, sparse_end, last)
            tok = blk * P + row_tok
            live = (slot < last) & (tok >= 0) & (tok < seq_len)  # blk = -1: no block
            kt = tl.load(k_ptr + page[:, None] * stride_kp + h * stride_kh + row_tok[:, None] * stride_kt
                         + offs_d[None, :], mask=live[:, None], other=0.0)
            vt = tl.load(v_ptr + page[:, None] * stride_vp + h * stride_vh + row_tok[:, None] * stride_vt
                         + offs_d[None, :], mask=live[:, None], other=0.0)
            s = tl.dot(q, tl.trans(kt), input_precision=PRECISION) * qk_scale
            s = tl.where(live[None, :], s, -float("inf"))
            m_new = tl.maximum(m, tl.max(s, 1))
            p = tl.exp2(s - m_new[:, None])
            alpha = tl.exp2(m - m_new)
            l = l * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt, input_precision=PRECISION)
            m = m_new
            blk, page = next_blk, next_page
            if SCORES:
                if retrieval:  # each page's log-sum-exp, for the block scores (row sums: no reshape)
                    cols = tl.arange(0, TILE_PAGES * P) // P
                    for t in tl.static_range(TILE_PAGES):
                        page_sum = tl.sum(tl.where(cols[None, :] == t, p, 0.0), 1)
                        in_seg = t0 + t + offs_g * 0 < last  # a vector: the interpreter refuses scalar & vector
                        tl.store(block_lse_ptr + (bh * G + offs_g) * max_blocks + t0 + t, m_new + tl.log2(page_sum),
                                 mask=(offs_g < G) & in_seg)
        # (program, head) pairs met in work order raise pid + bh by one or more at each step:
        # pid + bh numbers the partial results uniquely, and a head's are consecutive.
        part = pid + bh
        l_safe = tl.where(l > 0, l, 1.0)
        tl.store(o_part_ptr + (part * G + offs_g)[:, None] * D + offs_d[None, :], acc / l_safe[:, None],
                 mask=offs_g[:, None] < G)
        tl.store(lse_part_ptr + part * G + offs_g, m + tl.log2(l), mask=offs_g < G)
        pos = seg_end


@triton.jit
def _merge_kernel(
    o_part_ptr, lse_part_ptr, block_lse_ptr, seq_lens_ptr, is_retrieval_ptr, o_ptr, scores_ptr,
    stride_ob, stride_oh, stride_sb, stride_sh,
    n_slots, max_blocks, n_heads, sparse_page_cost, n_programs,
    HKV: tl.constexpr, G: tl.constexpr, G_PAD: tl.constexpr, P: tl.constexpr, D: tl.constexpr,
    BH_PAD: tl.constexpr, SCORE_BLOCK: tl.constexpr, SPLIT_CHUNK: tl.constexpr, PDL: tl.constexpr,
):
    """Program (bh, 0) merges head bh's output; program (bh, c > 0) writes its block scores
    c - 1 (SCORE_BLOCK of them), so the score pass runs beside the output merge. With PDL
    (programmatic dependent launch) the programs start while the split kernel still runs, work
    out where their partials lie from the inputs alone, and wait for the split grid only then."""
    bh = tl.program_id(0)
    chunk = tl.program_id(1)
    b = bh // HKV
    h = bh % HKV
    heads, work, unit, ends = _work_layout(seq_lens_ptr, is_retrieval_ptr, n_slots, n_heads, sparse_page_cost,
                                           HKV, P, BH_PAD)
    per = tl.maximum(tl.cdiv(tl.max(ends, 0), n_programs), tl.max(unit, 0))
    head_end = tl.sum(tl.where(heads == bh, ends, 0), 0)
    head_unit = tl.sum(tl.where(heads == bh, unit, 0), 0)
    head_work = tl.sum(tl.where(heads == bh, work, 0), 0)
    # The programs where this head's pages start (a page per program at least: per >= unit),
    # and so its partial results: pid + bh, consecutive.
    first_page = head_end - head_unit * head_work
    first_part = first_page // per + bh
    n_used = tl.where(head_work > 0, (head_end - head_unit) // per + bh - first_part + 1, 0)
    offs_g = tl.arange(0, G_PAD)
    offs_d = tl.arange(0, D)
    gmask = offs_g < G
    # One pass, SPLIT_CHUNK partial results at a time (their loads in flight together).
    offs_s = tl.arange(0, SPLIT_CHUNK)
    # Before the wait only inputs are read (seq_lens, is_retrieval): the split kernel is launched
    # without PDL, so every kernel before it had finished when it (and so this grid) started.
    if PDL:
        tl.extra.cuda.gdc_wait()  # the split grid's partials and page log-sum-exps are written and visible
    m = tl.full([G_PAD], -1.0e30, tl.float32)  # finite: a head with no token leaves no NaN
    l = tl.zeros([G_PAD], tl.float32)
    acc = tl.zeros([G_PAD, D], tl.float32)
    for s0 in range(0, n_used, SPLIT_CHUNK):
        sp = first_part + s0 + offs_s
        live = ((s0 + offs_s)[:, None] < n_used) & gmask[None, :]
        lse = tl.load(lse_part_ptr + (sp * G)[:, None] + offs_g[None, :], mask=live, other=-float("inf"))
        m_new = tl.maximum(m, tl.max(lse, 0))
        alpha = tl.exp2(m - m_new)
        w = tl.exp2(lse - m_new[None, :])  # [SPLIT_CHUNK, G_PAD]
        l = l * alpha + tl.sum(w, 0)
        if chunk == 0:
            o = tl.load(o_part_ptr + ((sp * G)[:, None, None] + offs_g[None, :, None]) * D + offs_d[None, None, :],
                        mask=live[:, :, None], other=0.0)
            acc = acc * alpha[:, None] + tl.sum(w[:, :, None] * o, 0)
        m = m_new
    l_safe = tl.where(l > 0, l, 1.0)
    if chunk == 0:
        tl.store(o_ptr + b * stride_ob + (h * G + offs_g)[:, None] * stride_oh + offs_d[None, :],
                 (acc / l_safe[:, None]).to(o_ptr.dtype.element_ty), mask=gmask[:, None])
    else:
        # Block mass = sum over the G query heads of 2^(block lse - head lse).
        lse_total = tl.where(gmask & (l > 0), m + tl.log2(l_safe), 0.0)  # padded heads add 2^-inf = 0
        retrieval = tl.load(is_retrieval_ptr + h) != 0
        scored = tl.where(retrieval, tl.cdiv(tl.load(seq_lens_ptr + b), P), 0)  # sparse heads score 0 everywhere
        j = (chunk - 1) * SCORE_BLOCK + tl.arange(0, SCORE_BLOCK)
        blse = tl.load(block_lse_ptr + (bh * G + offs_g)[:, None] * max_blocks + j[None, :],
                       mask=gmask[:, None] & (j < scored)[None, :], other=-float("inf"))
        mass = tl.sum(tl.exp2(blse - lse_total[:, None]), 0)
        tl.store(scores_ptr + b * stride_sb + h * stride_sh + j, mass, mask=j < max_blocks)


PROGRAMS_PER_SM = 2  # tunable: 1, 2, 3, 4
SPARSE_PAGE_COST = 10  # tunable: 8, 9, 10, 12 (eighths of a retrieval page: a sparse page needs one more lookup)
USE_PDL = True  # tunable: True, False (programmatic dependent launch of the merge; Hopper and later, CUDA only)
TILE_PAGES = 1  # tunable: 1, 2, 4
NUM_WARPS = 4  # tunable: 2, 4, 8
NUM_STAGES = 3  # tunable: 1, 2, 3, 4
MAX_REGS = None  # tunable: None, 128, 168, 192 (registers per thread: 168 lets 3 programs of 4 warps share an SM)
SCORE_BLOCK = 1024  # tunable: 256, 512, 1024, 2048
SPLIT_CHUNK = 32  # tunable: 8, 16, 32, 64
MERGE_WARPS = 4  # tunable: 4, 8


def num_programs(B, Hkv, max_blocks, device):
    """Split-kernel grid: PROGRAMS_PER_SM per multiprocessor (one full wave when they fit),
    fewer when there are fewer pages than that even if every head read all of them."""
    n_sm = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    return max(1, min(n_sm * PROGRAMS_PER_SM, B * Hkv * max_blocks))


def pdl_enabled(device):
    """Programmatic dependent launch: CUDA, compute capability 9 or more, a Triton that has it,
    and USE_PDL (never under the interpreter)."""
    if not USE_PDL or device.type != "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return False
    if device.index not in _PDL_OK:
        cuda = getattr(getattr(tl, "extra", None), "cuda", None)
        _PDL_OK[device.index] = (hasattr(cuda, "gdc_wait") and hasattr(cuda, "gdc_launch_dependents")
                                 and torch.cuda.get_device_capability(device)[0] >= 9)
    return _PDL_OK[device.index]


_PDL_OK = {}


def hybrid_decode(q, k_cache, v_cache, block_table, seq_lens, is_retrieval, indices, scores=True):
    """Returns (o [B, Hq, D], scores [B, Hkv, max_blocks] fp32, or None when scores=False)."""
    B, Hq, D = q.shape
    _, Hkv, P, Dk = k_cache.shape
    if Dk != D or Hq % Hkv or v_cache.shape != k_cache.shape or D & (D - 1) or P & (P - 1) or P < 16:
        raise ValueError(f"hybrid_decode: bad shapes q {tuple(q.shape)} k_cache {tuple(k_cache.shape)} "
                         f"v_cache {tuple(v_cache.shape)} (D and P must be powers of two, P >= 16)")
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("hybrid_decode: the cache's last dimension must be contiguous")
    q = q.contiguous()
    block_table = block_table.contiguous()
    indices = indices.contiguous()
    pdl = pdl_enabled(q.device)
    G = Hq // Hkv
    max_blocks = block_table.shape[1]
    n_slots = indices.shape[-1]
    n_prog = num_programs(B, Hkv, max_blocks, q.device)
    dev = q.device
    o = torch.empty_like(q)
    o_part = torch.empty((n_prog + B * Hkv, G, D), dtype=torch.float32, device=dev)  # index pid + bh
    lse_part = torch.empty((n_prog + B * Hkv, G), dtype=torch.float32, device=dev)
    block_lse = torch.empty((B * Hkv, G, max_blocks) if scores else (1,), dtype=torch.float32, device=dev)
    out_scores = torch.empty((B, Hkv, max_blocks) if scores else (1, 1, 1), dtype=torch.float32, device=dev)
    G_PAD = max(16, triton.next_power_of_2(G))  # tl.dot needs 16 rows
    BH_PAD = triton.next_power_of_2(B * Hkv)
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    _split_kernel[(n_prog,)](
        q, k_cache, v_cache, block_table, seq_lens, is_retrieval, indices, o_part, lse_part, block_lse,
        math.log2(math.e) / math.sqrt(D),
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_table.stride(0),
        indices.stride(0), indices.stride(1), n_slots, max_blocks, B * Hkv, SPARSE_PAGE_COST,
        HKV=Hkv, G=G, G_PAD=G_PAD, P=P, D=D, BH_PAD=BH_PAD, TILE_PAGES=TILE_PAGES, SCORES=scores,
        PRECISION=precision, PDL=pdl,
        num_warps=NUM_WARPS, num_stages=NUM_STAGES, maxnreg=MAX_REGS)
    score_block = min(SCORE_BLOCK, triton.next_power_of_2(max_blocks))
    n_score = triton.cdiv(max_blocks, score_block) if scores else 0
    _merge_kernel[(B * Hkv, 1 + n_score)](
        o_part, lse_part, block_lse, seq_lens, is_retrieval, o, out_scores,
        o.stride(0), o.stride(1), out_scores.stride(0), out_scores.stride(1), n_slots, max_blocks, B * Hkv,
        SPARSE_PAGE_COST, n_prog, HKV=Hkv, G=G, G_PAD=triton.next_power_of_2(G), P=P, D=D, BH_PAD=BH_PAD,
        SCORE_BLOCK=score_block, SPLIT_CHUNK=SPLIT_CHUNK, PDL=pdl, num_warps=MERGE_WARPS,
        **({"launch_pdl": True} if pdl else {}))
    return o, (out_scores if scores else None)


def dense_decode(q, k_cache, v_cache, block_table, seq_lens):
    """Split-KV GQA decode over the whole paged cache (every head a retrieval head, no scores)."""
    Hkv = k_cache.shape[1]
    roles = torch.ones(Hkv, dtype=torch.int32, device=q.device)
    no_blocks = torch.full((1, 1, 1), -1, dtype=torch.int32, device=q.device)
    return hybrid_decode(q, k_cache, v_cache, block_table, seq_lens, roles, no_blocks, scores=False)[0]


def entry(q, k_cache, v_cache, block_table, seq_lens, is_retrieval, indices):
    return hybrid_decode(q, k_cache, v_cache, block_table, seq_lens, is_retrieval, indices)
