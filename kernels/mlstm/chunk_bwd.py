"""mLSTM chunkwise backward (Triton): the forward's two kernels, reused (with settings of their own below).

Treating the stabilizer m as a constant (h depends on it only through eps), with
A_tj = exp(F_t - F_j + i_j - m_t) (q_t . k_j) / sqrt(DQK), s_t = sum_j A_tj, den_t = max(|s_t|, exp(-m_t)) + eps,
h_t = sum_j A_tj v_j / den_t and g = dL/dh:
  dnum_t = g_t / den_t,  ds_t = -(g_t . h_t) / den_t * sign(s_t) [|s_t| > exp(-m_t)],
  dA_tj = dnum_t . v_j + ds_t = (g_t . v_j + ds'_t) / den_t   with ds'_t = ds_t den_t.
  dq_t = sum_{j<=t} dA_tj A_tj/q_t..k: the forward's product with (X, Y, Z) = (g, v, k) over the
         forward states C^T (and ds' n), the 1/den folded into the row gates;
  dv_j = sum_{t>=j} A_tj dnum_t and dk_j = sum_{t>=j} dA_tj exp(..) q_t: the same product
         reversed, over reverse states R_c = sum_{t after chunk c} exp(b_t + m_c - m_t) q_t dnum_t^T
         and r_c (the same with ds), made by the state scan run backwards.
  Gates: d log D_tj = dA_tj A_tj, whose row sums are q_t . dq_t and column sums k_j . dk_j, so
         di_j = k_j . dk_j and d logsigmoid(f)_t = sum_{s>=t} (q_s . dq_s - k_s . dk_s) (`_forget_grads`).
         That sum over the rest of the sequence nearly cancels (it is the sum of dA A over the pairs j < t <= s),
         so with FORGET_GRAD_FROM_STATES the part from the chunks after t's chunk c is taken from the states: the
         pairs with j up to chunk c and s after it sum to scale (<C_{c+1}, R_c> + <n_{c+1}, r_c>), the forward
         state after chunk c with the reverse state after it, which the reverse scan forms (`state_scan`'s pair).
         Only the sum inside a chunk is then left to cancel.
"""
import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels.mlstm.chunk_fwd import CHUNK, attend, check_inputs, gate_terms, state_scan

# Settings of the backward's launches (the forward's are chunk_fwd.py's tunables), from the sweep of
# docs/benchmarks/linear.md. Attends: tile (rows per program, unless the caller passes one), col_tile (columns
# per step inside the chunk, <= tile; absent: tile), bk (contraction block), bn (output block; bn < the output
# width splits rows over programs and takes the gate dots outside), warps, stages, maxnreg (register cap),
# prefetch (loads that feed no dot issued a step early, see chunk_fwd.PREFETCH).
DQ_ATTEND = dict(tile=64, bk=64, bn=256, warps=16, stages=4, maxnreg=None)  # dh (512) -> dq (256), and dh . h
DK_ATTEND = dict(tile=64, bk=64, bn=256, warps=16, stages=3, maxnreg=None, prefetch=True)  # v (512) -> dk (256)
DV_ATTEND = dict(tile=64, bk=32, bn=512, warps=16, stages=4, maxnreg=None, prefetch=True)  # k (256) -> dv (512)
# the reverse state scan (q, dh): blocks of the state, warps, stages, prefetch (chunk_fwd.STATE_PREFETCH); 64 x 128
# blocks at every T (min_programs 0): also at T=64K, B=1, where they leave 128 programs, they measured faster than
# 64 x 64 (1.277 against 1.313 ms, linear.md), unlike the forward scan's
REV_SCAN = dict(bk=64, bn=128, warps=4, stages=2, prefetch=True, min_programs=0)
# The forget gates' gradient past each chunk from the boundary states (True), or as the sum of q . dq - k . dk over
# the later chunks (False, as mlstm_kernels and fla take it). On the H200 (bf16, B=1, 8 heads of 256 / 512; four
# calls) the sum over the tokens of df, a forget gate bias' gradient, was 0.3-0.7% off at T = 2K, 16K and 64K from
# the states, and 1.9-4.2 / 27-34 / 73-205% off from the sums; the states cost 0.14 / 0.14 / 0.27 ms of a
# 6.5-7.3 ms forward+backward at T = 1K / 8K / 64K (linear.md, session 6).
FORGET_GRAD_FROM_STATES = True
# the reverse scan forming the boundary products (linear.md, session 6, 01:07): 64 x 128 blocks where they make
# enough programs (1.03 against 1.25 ms for 64 x 64 at 3 stages, T=8K, B=8); at T=64K, B=1 the 128 programs they
# would make were slower than 256 of 64 x 64 (1.66 against 1.57-1.59 ms; 64 x 32, 32 x 64: 2.27, 3.88)
# (its small blocks take q weighted first, chunk_fwd.STATE_WEIGHT_FIRST: at T=64K, B=1 `weight_chunks` 0.15 ms and the
# scan 1.06 against 1.54 ms; 64 x 128 blocks so measured slower, 1.28 against 1.06 ms at 8K: with the second pipeline
# buffers the scan leaves shared memory for one program per SM, not two)
REV_SCAN_PAIRED = dict(bk=64, bn=128, warps=4, stages=2, prefetch=True, weight_first=False, min_programs=256,
                       small_bk=64, small_bn=64, small_warps=4, small_weight_first=True)


def rev_scan_config():
    """The reverse scan's settings in force: REV_SCAN_PAIRED when it forms the boundary products, else REV_SCAN."""
    return REV_SCAN_PAIRED if FORGET_GRAD_FROM_STATES else REV_SCAN


def mlstm_chunkwise_bwd(dh, q, k, v, i, f, h, c_states, n_states, den, s, chunk=None, tile=None):
    chunk = chunk or CHUNK
    tile = min(tile, chunk) if tile else None  # None: each attend's own setting
    check_inputs(q, k, v, i, f, chunk, tile)
    b, nh, t, dqk = q.shape
    dv = v.shape[-1]
    bh = b * nh
    scale = 1.0 / math.sqrt(dqk)
    q, k, v, h, dh = (x.reshape(bh, t, x.shape[-1]).contiguous() for x in (q, k, v, h, dh))
    gates = gate_terms(i.reshape(bh, t), f.reshape(bh, t), chunk)
    tp = gates["row"].shape[-1]
    log_den = F.pad(torch.log(den), (0, tp - t))
    row_g, inter_g = gates["row"] - log_den, gates["inter"] - log_den
    common = dict(chunk=chunk, tile=tile, scale=scale)
    # dq first: it also forms ds' = -(dh . h) sign(s) [|s| > exp(-m)] (= ds * den) per row, which the reverse
    # scan and the dk attend read; and the gate gradients' row dots q . dq. Zeros: the attend writes no row tile
    # that starts past T, and the readers weight those padding rows by zero (0 x garbage NaN is NaN)
    ds_scaled = torch.zeros(bh, tp, device=q.device, dtype=torch.float32)
    dq, row_sums = attend(dh, v, k, c_states, n_states, row_g, gates["col"], inter_g, state_t=True,
                          extra=ds_scaled, row_extra=True, dot_w=q, ds_from=(h, s, gates["m"]), config=DQ_ATTEND,
                          **common)
    from_states = FORGET_GRAD_FROM_STATES
    r_states, r_vec, boundary = state_scan(q, dh, inter_g, gates["decay"], chunk=chunk, reverse=True,
                                           coef=ds_scaled, pair=(c_states, n_states) if from_states else None,
                                           config=rev_scan_config())
    dk, col_sums = attend(v, dh, q, r_states, r_vec, gates["col"], row_g, gates["weight"], state_t=True,
                          reverse=True, extra=ds_scaled, col_extra=True, dot_w=k, config=DK_ATTEND, **common)
    dv_ = attend(k, q, dh, r_states, r_vec, gates["col"], row_g, gates["weight"], reverse=True, config=DV_ATTEND,
                 **common)
    d = row_sums - col_sums
    df = forget_grads(d, scale * boundary if from_states else later_chunks(d, chunk), f.reshape(bh, t), chunk)
    shape = (b, nh, t)
    return (dq.view(b, nh, t, dqk), dk.view(b, nh, t, dqk), dv_.view(b, nh, t, dv),
            col_sums.view(shape).to(i.dtype), df.view(shape))


@triton.jit
def _forget_grads(d_ptr, after_ptr, f_ptr, df_ptr, T, NC, CHUNK: tl.constexpr):
    """df_t = sigmoid(-f_t) sum_{s >= t} d_s for the tokens of chunk c: its own reverse sum plus the chunks' after."""
    c, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    rows = c * CHUNK + tl.arange(0, CHUNK)
    valid = rows < T
    d_log_f = tl.cumsum(tl.load(d_ptr + bh * T + rows, mask=valid, other=0.0), 0, reverse=True)
    d_log_f += tl.load(after_ptr + bh * NC + c)
    f = tl.load(f_ptr + bh * T + rows, mask=valid, other=0.0).to(tl.float32)
    tl.store(df_ptr + bh * T + rows, (d_log_f / (1.0 + tl.exp(f))).to(df_ptr.dtype.element_ty), mask=valid)


def later_chunks(d, chunk):
    """(BH, T) -> (BH, NC): per chunk, the sum of d over the chunks after it."""
    bh, t = d.shape
    nc = triton.cdiv(t, chunk)
    totals = F.pad(d, (0, nc * chunk - t)).view(bh, nc, chunk).sum(-1)
    return totals.flip(-1).cumsum(-1).flip(-1) - totals


def forget_grads(d, after, f, chunk):
    """The forget gates' gradient from d = q . dq - k . dk (BH, T) fp32 (dL/dlog D's row minus column sums) and
    after (BH, NC) fp32, the sum of d over the chunks after each chunk: df = sigmoid(-f) times d's reverse
    cumulative sum inside the chunk plus `after`."""
    bh, t = d.shape
    nc = triton.cdiv(t, chunk)
    f = f.contiguous()
    df = torch.empty_like(f)
    _forget_grads[(nc, bh)](d, after, f, df, t, nc, CHUNK=chunk)
    return df
