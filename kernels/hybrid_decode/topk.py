"""Seed for task `block_topk`: pick each KV head's k blocks by threshold search, no sort.

One program per (sequence, KV head) holds the whole score row in registers. Scores are
non-negative floats, so their bit patterns order like the floats as int32; a 31-step
binary search over the bits finds the k-th largest key (forced blocks get +inf's bits),
then the blocks above it, plus the first ties at it, are written in ascending order
through a prefix sum: O(31 * NB) comparisons and no data-dependent control flow.
Semantics: baselines/hybrid_decode.py, block_topk.
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _block_topk_kernel(scores_ptr, n_blocks_ptr, out_ptr, n_cols, k, n_sink, n_local,
                       stride_sb, stride_sh, stride_ob, stride_oh,
                       H: tl.constexpr, NB_PAD: tl.constexpr, K_PAD: tl.constexpr):
    pid = tl.program_id(0)
    b = pid // H
    h = pid % H
    nb = tl.minimum(tl.load(n_blocks_ptr + b), n_cols)
    j = tl.arange(0, NB_PAD)
    valid = j < nb
    s = tl.load(scores_ptr + b * stride_sb + h * stride_sh + j, mask=valid, other=0.0)
    forced = (j < n_sink) | (j >= nb - n_local)
    key = tl.where(forced, 0x7F800000, s.to(tl.int32, bitcast=True))
    key = tl.where(valid, key, -1)
    want = tl.minimum(k, nb)
    # Largest threshold with at least `want` keys at or above it: the want-th largest key.
    thr = tl.zeros([], tl.int32)
    for bit in tl.static_range(30, -1, -1):
        cand = thr | (1 << bit)
        count = tl.sum((key >= cand).to(tl.int32), 0)
        thr = tl.where(count >= want, cand, thr)
    above = key > thr
    ties = key == thr
    tie_rank = tl.cumsum(ties.to(tl.int32), 0)  # 1-based among the ties, lower blocks first
    chosen = above | (ties & (tie_rank <= want - tl.sum(above.to(tl.int32), 0)))
    pos = tl.cumsum(chosen.to(tl.int32), 0) - 1
    out_row = out_ptr + b * stride_ob + h * stride_oh
    tl.store(out_row + pos, j, mask=chosen)
    r = tl.arange(0, K_PAD)
    tl.store(out_row + r, tl.full([K_PAD], -1, tl.int32), mask=(r >= want) & (r < k))


NUM_WARPS = 4  # tunable: 1, 2, 4, 8, 16


def block_topk(scores, n_blocks, k, n_sink, n_local):
    """scores [B, H, NB] fp32 (non-negative), n_blocks [B] int32 -> [B, H, k] int32, ascending, -1 padded."""
    if scores.dtype != torch.float32 or scores.dim() != 3:
        raise ValueError(f"block_topk: scores must be float32 [B, H, NB], got {scores.dtype} {tuple(scores.shape)}")
    if k < 1:
        raise ValueError(f"block_topk: k must be >= 1, got {k}")
    scores = scores.contiguous()
    B, H, NB = scores.shape
    out = torch.empty((B, H, k), dtype=torch.int32, device=scores.device)
    _block_topk_kernel[(B * H,)](
        scores, n_blocks, out, NB, k, n_sink, n_local,
        scores.stride(0), scores.stride(1), out.stride(0), out.stride(1),
        H=H, NB_PAD=triton.next_power_of_2(NB), K_PAD=triton.next_power_of_2(k), num_warps=NUM_WARPS)
    return out


def entry(scores, n_blocks, k, n_sink, n_local):
    return block_topk(scores, n_blocks, k, n_sink, n_local)
