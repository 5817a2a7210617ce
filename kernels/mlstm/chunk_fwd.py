"""mLSTM chunkwise forward (Triton), seed of the `mlstm_chunkwise_fwd` task; the library op
(kernels/mlstm/ops.py) uses `mlstm_chunkwise_fwd`, and the backward reuses both kernels.

Three steps, none of which waits on another program:
  1. gate terms (`_gate_chunks`, `_gate_chunk_scan` over the chunks, `_gate_tokens`; O(T) floats):
     per-chunk cumulative log forget b, the chunk-boundary stabilizers m_c (a max-plus scan),
     per-token stabilizers m_t; every exponent the kernels use is precomputed in log space and
     is <= 0, so no exp overflows.
  2. `_chunk_state_scan`: the inter-chunk recurrence C_c = exp(decay_c) C_{c-1} + (k * w)^T v (with no backward
     to follow, k * w and the n increments are written first by `_weight_chunks`, so that the scan's product takes
     both operands from Triton's pipeline; with one, w goes onto v in registers: STATE_WEIGHT_FIRST), parallel
     over (DQK/BK, DV/BN) tiles of the state (fp32 in registers); stores the state before every chunk in the
     inputs' dtype (bf16 at 7B: half the bytes, a bf16 tensor-core dot in step 3); `_n_state_parts` puts the n
     states in two parts of that dtype (q . n a tensor-core dot too).
  3. `_chunk_attend`: every (tile of BR rows in a chunk, DV block) at once: intra-chunk attention
     over the chunk's earlier column tiles (TFLA-style tiling: chunks of 64..512 as tiles of
     BR x BC, so the score tile stays in registers) plus q . C_{c-1}, then the normalizer.
`_chunk_attend` is written once for four products (forward h, and dq, dk, dv in the backward):
out[rows] = scale * (sum_{cols in chunk, causal} (X_r . Y_c + extra) exp(rg_r + cg_c) Z_c
                     + exp(rs_r) (X_r @ STATE + state extra)).
"""
import math

import torch
import triton
import triton.language as tl

CHUNK = 128  # tunable: 64, 128, 256, 512
# the forward attend (h); the backward's attends and reverse scan have their own settings in chunk_bwd.py
TILE = 64  # tunable: 32, 64, 128
# columns per step inside the chunk (None: TILE)
COL_TILE = None  # tunable: None, 32, 64
BLOCK_K = 64  # tunable: 32, 64, 128
BLOCK_N = 512  # tunable: 64, 128, 256, 512
NUM_WARPS = 16  # tunable: 4, 8, 16
NUM_STAGES = 3  # tunable: 1, 2, 3, 4
# loads that feed no dot (the n state, V tiles and gates of the column loop) issued a step early by hand
PREFETCH = True  # tunable: False, True
# A register cap on the attend (Triton's maxnreg); at 16 warps 128 registers is the hardware's own limit. (The
# 8-warp, 128-register default of the 19:47 run gave an h that changed from run to run: a race of x's pipeline
# buffer, fixed in `_chunk_attend`; docs/benchmarks/linear.md.)
ATTEND_MAX_NREG = None  # tunable: None, 128
STATE_BLOCK_K = 64  # tunable: 32, 64, 128
STATE_BLOCK_N = 128  # tunable: 32, 64, 128
STATE_NUM_WARPS = 4  # tunable: 4, 8
STATE_NUM_STAGES = 2  # tunable: 1, 2, 3
# each chunk's decay (and, in the backward, coef) loaded one step early
STATE_PREFETCH = True  # tunable: False, True
# A weighted by exp(wlog) in a pass of its own (`weight_chunks`, 0.15 ms at 7B shapes), which also sums the vector
# state's increments per chunk in fp32: the scan's product then takes both operands straight from Triton's pipeline
# (B weighted in registers goes through shared memory a second time in every step). The forward scan measured
# 0.62 / 0.91 ms against 0.86 / 1.23 at T = 8K / 64K so, but the MLSTM layer's forget-bias gradient (bf16, T=2048)
# came out 2.2% off against 1.1%: k w rounded to bf16 where v w was (linear.md, session 8; the sums taken from the
# rounded k w as well put dq 2-11% off, session 9). Off in a forward with autograd, on in one without
# (INFERENCE_WEIGHT_FIRST); the reverse scan takes it (chunk_bwd.REV_SCAN_PAIRED).
STATE_WEIGHT_FIRST = False  # tunable: False, True
# long T, small batch: fewer scan programs than this with the blocks above leave SMs idle while each program
# walks every chunk, so the scan then takes the smaller blocks below (at T=64K, B=1: 128 programs with 64 x 128,
# 256 with 64 x 64, 1.245 against 1.342 ms; the reverse scan measured the other way, chunk_bwd.REV_SCAN)
SCAN_MIN_PROGRAMS = 256  # tunable: 0, 132, 256, 512
SMALL_STATE_BLOCK_K = 64  # tunable: 32, 64, 128
SMALL_STATE_BLOCK_N = 64  # tunable: 32, 64, 128
SMALL_STATE_NUM_WARPS = 4  # tunable: 4, 8
SMALL_STATE_WEIGHT_FIRST = False  # tunable: False, True
# A forward that no backward follows (inference, prefill) weights first: h's error is the same (2.38e-3 either way
# at B=8, T=8K), only the forget gates' gradient suffered from it. The main blocks gained 3-28% (T=8K, B=8: 1.910
# against 1.999 ms at chunk 128, 2.113 against 2.925 at 256); the small blocks gained at chunk 128 (B=1, T=64K:
# 2.179 against 2.366 ms) and lost at 256 (2.371 against 2.249), so they weight first up to this chunk only
# (linear.md, session 9).
INFERENCE_WEIGHT_FIRST = True  # tunable: False, True
INFERENCE_SMALL_WEIGHT_MAX_CHUNK = 128  # tunable: 64, 128, 256, 512
SHARED_MEMORY = 232448  # bytes one program may use on Hopper (H100 / H200)
EPS = 1e-6


@triton.jit
def _chunk_state_scan(a_ptr, b_ptr, wlog_ptr, decay_ptr, coef_ptr, sums_ptr, states_ptr, final_ptr, vec_ptr,
                      pair_ptr, pair_vec_ptr, pair_out_ptr, T, TP, NC, n_states, KD: tl.constexpr, ND: tl.constexpr,
                      CHUNK: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr, REVERSE: tl.constexpr,
                      HAS_COEF: tl.constexpr, PREFETCH: tl.constexpr, PAIR: tl.constexpr, WEIGHTED: tl.constexpr):
    """state <- exp(decay_c) state + (A_c * exp(wlog))^T B_c and vec <- exp(decay_c) vec + sum_j A_j exp(wlog_j) coef_j,
    over chunks in order (or reversed), or with WEIGHTED the same with A already weighted and the vec increments
    summed (`weight_chunks`: sums (BH, NC, KD) fp32; wlog and coef unused); states[c] (in the states' dtype) is the
    state before chunk c is absorbed; in forward order the final state goes to `final` (fp32) and vec[NC] is the
    final vec.
    With PAIR (reversed): this program's part of the Frobenius products <pair[c + 1], states[c]> (pair: the
    forward's states, (BH, NC, KD, ND)), summed over its BN columns only, goes to pair_out[bh, pk, pn, c, :BK], and
    with pn = 0, vec[c] * pair_vec[c + 1] (pair_vec: the forward's n states, (BH, NC + 1, KD)) to
    pair_out[bh, pk, NPN, c, :BK] (chunk_bwd.py: the forget gates' gradient at chunk boundaries)."""
    pk, pn, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    rk = pk * BK + tl.arange(0, BK)
    rn = pn * BN + tl.arange(0, BN)
    a_ptr += bh * T * KD
    b_ptr += bh * T * ND
    wlog_ptr += bh * TP
    coef_ptr += bh * TP
    sums_ptr += bh * NC * KD + rk
    decay_ptr += bh * NC
    states_ptr += bh * NC * KD * ND
    vec_ptr += bh * n_states * KD
    pair_ptr += bh * NC * KD * ND + rk[:, None] * ND + rn[None, :]
    pair_vec_ptr += bh * (NC + 1) * KD + rk
    pair_out_ptr += ((bh * tl.num_programs(0) + pk) * (tl.num_programs(1) + 1) + pn) * NC * BK + tl.arange(0, BK)
    state = tl.zeros((BK, BN), tl.float32)
    vec = tl.zeros((BK,), tl.float32)
    if PREFETCH:  # the next chunk's decay (and coef) loaded one step ahead: they are not in Triton's pipeline
        c_first = NC - 1 if REVERSE else 0
        decay_next = tl.load(decay_ptr + c_first)
        if HAS_COEF:
            coef_next = tl.load(coef_ptr + c_first * CHUNK + tl.arange(0, CHUNK))
        if PAIR:
            pair_vec_next = tl.load(pair_vec_ptr + NC * KD)
    for step in range(NC):
        c = NC - 1 - step if REVERSE else step
        if PREFETCH:
            log_decay = decay_next
            c_next = tl.maximum(c - 1, 0) if REVERSE else tl.minimum(c + 1, NC - 1)
            decay_next = tl.load(decay_ptr + c_next)
            if HAS_COEF:
                coef = coef_next
                coef_next = tl.load(coef_ptr + c_next * CHUNK + tl.arange(0, CHUNK))
            if PAIR:  # the next step's (chunk c - 1's) pair_vec[c]
                pair_vec = pair_vec_next
                pair_vec_next = tl.load(pair_vec_ptr + c * KD)
        else:
            log_decay = tl.load(decay_ptr + c)
            if HAS_COEF:
                coef = tl.load(coef_ptr + c * CHUNK + tl.arange(0, CHUNK))
            if PAIR:
                pair_vec = tl.load(pair_vec_ptr + (c + 1) * KD)
        state_out = state.to(states_ptr.dtype.element_ty)
        if PAIR:
            # the rows' products as the diagonal of state pair^T on the tensor cores: pair is then a dot operand,
            # which Triton's pipeline loads, where a product in registers converted pair's layout through shared
            # memory in every step (1.38 against 1.25 ms at T=8K, 64 x 64 blocks, linear.md)
            last = tl.arange(0, BK) < tl.where(c + 1 < NC, BK, 0)  # pair[NC] is past the forward's states
            pair = tl.load(pair_ptr + (c + 1) * KD * ND, mask=last[:, None], other=0.0)
            rows_by_rows = tl.dot(state_out, tl.trans(pair))
            product = _diagonal(rows_by_rows, BK)
            tl.store(pair_out_ptr + c * BK, product)
            if pn == 0:  # the n states' products: a row of their own
                tl.store(pair_out_ptr + (tl.num_programs(1) * NC + c) * BK, vec * pair_vec)
        tl.store(states_ptr + c * KD * ND + rk[:, None] * ND + rn[None, :], state_out)
        if pn == 0:
            tl.store(vec_ptr + c * KD + rk, vec)
        rows = c * CHUNK + tl.arange(0, CHUNK)
        valid = rows < T
        # A_c loaded transposed and the weights put on B_c: no transpose of a register tile
        a_t = tl.load(a_ptr + rk[:, None] + rows[None, :] * KD, mask=valid[None, :], other=0.0)
        b = tl.load(b_ptr + rows[:, None] * ND + rn[None, :], mask=valid[:, None], other=0.0)
        decay = tl.exp(log_decay)
        if WEIGHTED:  # A only feeds the product: Triton's pipeline gives it two buffers (one when used in registers)
            state = decay * state + tl.dot(a_t, b)
            if pn == 0:
                vec = decay * vec + tl.load(sums_ptr + c * KD)
        else:
            w = tl.exp(tl.load(wlog_ptr + rows))
            state = decay * state + tl.dot(a_t, (b.to(tl.float32) * w[:, None]).to(a_t.dtype))
            if pn == 0:  # the vector state: only the first DV block's programs keep it
                if HAS_COEF:
                    w = w * coef
                vec = decay * vec + tl.sum(a_t.to(tl.float32) * w[None, :], axis=1)
    if not REVERSE:
        tl.store(final_ptr + bh * KD * ND + rk[:, None] * ND + rn[None, :], state)
        if pn == 0:
            tl.store(vec_ptr + NC * KD + rk, vec)


@triton.jit
def _chunk_attend(x_ptr, y_ptr, z_ptr, state_ptr, vec_ptr, rg_ptr, cg_ptr, rs_ptr, extra_ptr, m_ptr,
                  out_ptr, den_ptr, s_ptr, dot_w_ptr, dot_ptr, h_ptr, T, TP, n_states, n_vec, st_k, st_n, scale, eps,
                  KD: tl.constexpr, ND: tl.constexpr, CHUNK: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr,
                  BK: tl.constexpr, BN: tl.constexpr, REVERSE: tl.constexpr, FWD: tl.constexpr,
                  ROW_EXTRA: tl.constexpr, COL_EXTRA: tl.constexpr, ROW_DOT: tl.constexpr, ROW_DS: tl.constexpr,
                  PREFETCH: tl.constexpr):
    # the DV blocks of one row tile are neighbours in the launch order: they share its x, y loads in L2
    n_blocks: tl.constexpr = (ND + BN - 1) // BN
    pr, pn, bh = tl.program_id(0) // n_blocks, tl.program_id(0) % n_blocks, tl.program_id(1).to(tl.int64)
    if pr * BR >= T:
        return
    rows = pr * BR + tl.arange(0, BR)
    rn = pn * BN + tl.arange(0, BN)
    valid_r = rows < T
    chunk = (pr * BR) // CHUNK
    x_ptr += bh * T * KD
    y_ptr += bh * T * KD
    z_ptr += bh * T * ND
    out_ptr += bh * T * ND
    rg_ptr += bh * TP
    cg_ptr += bh * TP
    rs_ptr += bh * TP
    extra_ptr += bh * TP
    state_ptr += (bh * n_states + chunk) * KD * ND
    vec_len: tl.constexpr = KD * 16 if FWD else ND  # FWD: the n state's parts (`n_state_parts`)
    vec_ptr += (bh * n_vec + chunk) * vec_len
    rg = tl.load(rg_ptr + rows)
    if ROW_EXTRA and not ROW_DS:
        row_extra = tl.load(extra_ptr + rows)
    if PREFETCH:  # the row and column vectors used after the state product, loaded before it
        log_state_scale = tl.load(rs_ptr + rows)
        if ROW_EXTRA or COL_EXTRA:
            vec_n = tl.load(vec_ptr + rn)
        if ROW_DS or FWD:
            m_rows = tl.load(m_ptr + bh * TP + rows)
        if ROW_DS:
            s_fwd = tl.load(s_ptr + bh * T + rows, mask=valid_r, other=0.0)
    # the state carried into (or, reversed, out of) this chunk, in the inputs' dtype (a tensor-core
    # dot, half the bytes of fp32); its rows are weighted by exp(rs) after the dot
    acc = tl.zeros((BR, BN), tl.float32)
    s = tl.zeros((BR,), tl.float32)
    h_ptr += bh * T * KD
    # The row dots beside the state product, on the tensor cores, so that x only feeds wgmmas and every operand is
    # in Triton's pipeline: the forward's q . n as q @ (n's hi and lo parts), and dq's dh . h (x = dh; no pass of its
    # own) as the diagonal of dh h^T. In registers they needed x loaded twice: a tile that feeds both a wgmma and
    # registers gets one buffer fewer than the stages from Triton's pipeliner, and the next step's copy then
    # overwrote it under the running wgmma (h and dq changed from run to run on the H200; linear.md).
    if FWD:
        q_n = tl.zeros((BR, 16), tl.float32)
    if ROW_DS:
        dh_h = tl.zeros((BR, BR), tl.float32)
    for k0 in range(0, KD, BK):
        rk = k0 + tl.arange(0, BK)
        x = tl.load(x_ptr + rows[:, None] * KD + rk[None, :], mask=valid_r[:, None], other=0.0)
        acc = tl.dot(x, tl.load(state_ptr + rk[:, None] * st_k + rn[None, :] * st_n).to(x.dtype), acc)
        if FWD:
            q_n = tl.dot(x, tl.load(vec_ptr + rk[:, None] * 16 + tl.arange(0, 16)[None, :]), q_n)
        if ROW_DS:
            hx = tl.load(h_ptr + rows[:, None] * KD + rk[None, :], mask=valid_r[:, None], other=0.0)
            dh_h = tl.dot(x, tl.trans(hx), dh_h)
    if FWD:
        s = tl.sum(tl.where(tl.arange(0, 16)[None, :] < 2, q_n, 0.0), 1)
    if ROW_DS:
        s = _diagonal(dh_h, BR)
        # ds'_t = -(dh_t . h_t) sign(s_t) [|s_t| > exp(-m_t)] (chunk_bwd.py); written (padding rows: 0) for the
        # reverse scan and the dk attend, which run after this one
        if not PREFETCH:
            s_fwd = tl.load(s_ptr + bh * T + rows, mask=valid_r, other=0.0)
            m_rows = tl.load(m_ptr + bh * TP + rows)
        live = tl.abs(s_fwd) > tl.exp(-m_rows)
        sign = tl.where(s_fwd > 0, 1.0, tl.where(s_fwd < 0, -1.0, 0.0))
        row_extra = tl.where(live, -s * sign, 0.0)
        if pn == 0:
            tl.store(extra_ptr + rows, row_extra)
    if not PREFETCH:
        log_state_scale = tl.load(rs_ptr + rows)
        if ROW_EXTRA or COL_EXTRA:
            vec_n = tl.load(vec_ptr + rn)
    state_scale = tl.exp(log_state_scale)
    acc *= state_scale[:, None]
    s *= state_scale
    if ROW_EXTRA:
        acc += (state_scale * row_extra)[:, None] * vec_n[None, :]
    if COL_EXTRA:
        acc += state_scale[:, None] * vec_n[None, :]
    if ROW_DOT and PREFETCH:
        dot_w = tl.load(dot_w_ptr + bh * T * ND + rows[:, None] * ND + rn[None, :], mask=valid_r[:, None], other=0.0)
    if REVERSE:
        lo, hi = pr * BR, tl.minimum((chunk + 1) * CHUNK, T)
    else:
        lo, hi = chunk * CHUNK, pr * BR + BR
    for col0 in range(lo, hi, BC):
        cols = col0 + tl.arange(0, BC)
        valid_c = cols < T
        if PREFETCH:  # issued before the score loop, which hides their latency (Triton pipelines inner loops only)
            z = tl.load(z_ptr + cols[:, None] * ND + rn[None, :], mask=valid_c[:, None], other=0.0)
            cg = tl.load(cg_ptr + cols)
            if COL_EXTRA:
                col_extra = tl.load(extra_ptr + cols)
        score = tl.zeros((BR, BC), tl.float32)
        for k0 in range(0, KD, BK):
            rk = k0 + tl.arange(0, BK)
            x = tl.load(x_ptr + rows[:, None] * KD + rk[None, :], mask=valid_r[:, None], other=0.0)
            y = tl.load(y_ptr + cols[:, None] * KD + rk[None, :], mask=valid_c[:, None], other=0.0)
            score += tl.dot(x, tl.trans(y))
        if ROW_EXTRA:
            score += row_extra[:, None]
        if COL_EXTRA:
            if not PREFETCH:
                col_extra = tl.load(extra_ptr + cols)
            score += col_extra[None, :]
        if REVERSE:
            keep = (cols[None, :] >= rows[:, None]) & valid_c[None, :]
        else:
            keep = cols[None, :] <= rows[:, None]
        if not PREFETCH:
            cg = tl.load(cg_ptr + cols)
        score *= tl.exp(tl.where(keep, rg[:, None] + cg[None, :], -float("inf")))
        if FWD:
            s += tl.sum(score, axis=1)
        if not PREFETCH:
            z = tl.load(z_ptr + cols[:, None] * ND + rn[None, :], mask=valid_c[:, None], other=0.0)
        acc += tl.dot(score.to(z.dtype), z)
    acc = scale * acc
    if FWD:
        s = scale * s
        if not PREFETCH:
            m_rows = tl.load(m_ptr + bh * TP + rows)
        den = tl.maximum(tl.abs(s), tl.exp(-m_rows)) + eps
        acc = acc / den[:, None]
        if pn == 0:
            tl.store(den_ptr + bh * T + rows, den, mask=valid_r)
            tl.store(s_ptr + bh * T + rows, s, mask=valid_r)
    tl.store(out_ptr + rows[:, None] * ND + rn[None, :], acc.to(out_ptr.dtype.element_ty), mask=valid_r[:, None])
    if ROW_DOT:  # one block holds whole rows: their dots with w (q . dq, k . dk) instead of a pass over both
        if not PREFETCH:
            dot_w = tl.load(dot_w_ptr + bh * T * ND + rows[:, None] * ND + rn[None, :], mask=valid_r[:, None],
                            other=0.0)
        tl.store(dot_ptr + bh * T + rows, tl.sum(acc * dot_w.to(tl.float32), axis=1), mask=valid_r)


@triton.jit
def _max(a, b):
    return tl.maximum(a, b)


@triton.jit
def _diagonal(x, N: tl.constexpr):
    """The diagonal of an N x N tile: row dots taken as a tensor-core product's diagonal (see the callers)."""
    return tl.sum(tl.where(tl.arange(0, N)[:, None] == tl.arange(0, N)[None, :], x, 0.0), 1)


@triton.jit
def _chunk_log_gates(i_ptr, f_ptr, c, T, CHUNK: tl.constexpr):
    """Chunk c's token positions, input gates (padding: -1e30, so exp(-1e30 - anything) = 0 without
    inf - inf), b = cumulative logsigmoid(f) from the chunk start, and g = b at the chunk's end."""
    rows = c * CHUNK + tl.arange(0, CHUNK)
    valid = rows < T
    f = tl.load(f_ptr + rows, mask=valid, other=0.0).to(tl.float32)
    log_f = tl.where(valid, tl.minimum(f, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(f))), 0.0)
    ig = tl.load(i_ptr + rows, mask=valid, other=-1e30).to(tl.float32)
    b = tl.cumsum(log_f, 0)
    g = tl.sum(tl.where(tl.arange(0, CHUNK) == CHUNK - 1, b, 0.0))
    return rows, ig, b, g


@triton.jit
def _gate_chunks(i_ptr, f_ptr, g_ptr, a_ptr, T, NC, CHUNK: tl.constexpr):
    """Per chunk: its log forget g and a = max_j g - b_j + i_j (the stabilizer of its own tokens' weights)."""
    c, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    _, ig, b, g = _chunk_log_gates(i_ptr + bh * T, f_ptr + bh * T, c, T, CHUNK)
    tl.store(g_ptr + bh * NC + c, g)
    tl.store(a_ptr + bh * NC + c, tl.max(g - b + ig, 0))


@triton.jit
def _gate_chunk_scan(g_ptr, a_ptr, m_chunk_ptr, NC, BLOCK: tl.constexpr):
    """Per batch*head, over its chunks in blocks of BLOCK: m_c = G_c + max(0, max_{j<=c} a_j - G_j), G the
    cumulative chunk log-forget g: the recurrence m_c = max(g_c + m_{c-1}, a_c) from m = 0 in closed form."""
    bh = tl.program_id(0).to(tl.int64)
    g_ptr += bh * NC
    a_ptr += bh * NC
    m_chunk_ptr += bh * NC
    g_before = 0.0  # G at the end of the previous block
    best = 0.0  # max(0, a_j - G_j) over the previous blocks
    for c0 in range(0, NC, BLOCK):
        cs = c0 + tl.arange(0, BLOCK)
        valid = cs < NC
        big_g = g_before + tl.cumsum(tl.load(g_ptr + cs, mask=valid, other=0.0), 0)
        run = tl.maximum(best, tl.associative_scan(tl.load(a_ptr + cs, mask=valid, other=-float("inf")) - big_g, 0,
                                                   _max))
        tl.store(m_chunk_ptr + cs, big_g + run, mask=valid)
        g_before = tl.max(tl.where(cs == tl.minimum(c0 + BLOCK, NC) - 1, big_g, -float("inf")), 0)
        best = tl.max(run, 0)


@triton.jit
def _gate_tokens(i_ptr, f_ptr, m_chunk_ptr, row_ptr, col_ptr, inter_ptr, weight_ptr, m_ptr, decay_ptr, T, NC,
                 CHUNK: tl.constexpr):
    """Per token, given the chunk stabilizers: m_t and every exponent the kernels use (all <= 0); per chunk,
    the log decay of the carried state."""
    c, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    rows, ig, b, g = _chunk_log_gates(i_ptr + bh * T, f_ptr + bh * T, c, T, CHUNK)
    m_chunk = tl.load(m_chunk_ptr + bh * NC + c)
    m_prev = tl.load(m_chunk_ptr + bh * NC + c - 1, mask=c > 0, other=0.0)
    m_tok = b + tl.maximum(m_prev, tl.associative_scan(ig - b, 0, _max))
    out = bh * NC * CHUNK + rows
    tl.store(row_ptr + out, b - m_tok)  # query side of the intra-chunk decay exp(b_t - b_j + i_j - m_t)
    tl.store(col_ptr + out, ig - b)  # key side
    tl.store(inter_ptr + out, b + m_prev - m_tok)  # weight of the carried state at token t
    tl.store(weight_ptr + out, g - b + ig - m_chunk)  # weight of token j in the next state
    tl.store(m_ptr + out, m_tok)
    tl.store(decay_ptr + bh * NC + c, g + m_prev - m_chunk)


GATE_SCAN_BLOCK = 1024  # chunks per step of `_gate_chunk_scan`


def gate_terms(i: torch.Tensor, f: torch.Tensor, chunk: int) -> dict:
    """Log-space gate quantities, (BH, TP) per token or (BH, NC) per chunk, TP = NC * chunk, fp32; three
    launches (per chunk, over the chunks, per token)."""
    bh, t = i.shape
    nc = triton.cdiv(t, chunk)
    i, f = i.contiguous(), f.contiguous()
    g, a, m_chunk, decay = (torch.empty(bh, nc, device=i.device, dtype=torch.float32) for _ in range(4))
    _gate_chunks[(nc, bh)](i, f, g, a, t, nc, CHUNK=chunk)
    _gate_chunk_scan[(bh,)](g, a, m_chunk, nc, BLOCK=min(GATE_SCAN_BLOCK, triton.next_power_of_2(nc)))
    row, col, inter, weight, m = (torch.empty(bh, nc * chunk, device=i.device, dtype=torch.float32) for _ in range(5))
    _gate_tokens[(nc, bh)](i, f, m_chunk, row, col, inter, weight, m, decay, t, nc, CHUNK=chunk)
    return dict(row=row, col=col, inter=inter, weight=weight, decay=decay, m=m, m_chunk=m_chunk, n_chunks=nc)


def check_inputs(q, k, v, i, f, chunk, tile):
    if q.dim() != 4 or q.shape != k.shape or q.shape[:-1] != v.shape[:-1] or i.shape != q.shape[:-1] \
            or f.shape != i.shape:
        raise ValueError(f"expected q, k (B, H, T, DQK), v (B, H, T, DV), i, f (B, H, T); got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}, {tuple(i.shape)}, {tuple(f.shape)}")
    for name, n in (("DQK", q.shape[-1]), ("DV", v.shape[-1])) + ((("tile", tile),) if tile else ()):
        if n < 16 or n & (n - 1):
            raise ValueError(f"{name}={n} must be a power of two >= 16")
    if tile and chunk % tile:
        raise ValueError(f"chunk size {chunk} must be a multiple of the tile {tile}")
    if chunk & (chunk - 1):
        raise ValueError(f"chunk size {chunk} must be a power of two")


ROWS = 64  # rows per program of `_row_dots`


@triton.jit
def _row_dots(a_ptr, b_ptr, out_ptr, R, D: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr):
    """out[r] = sum_d a[r, d] b[r, d] in fp32, without fp32 copies of a and b in memory."""
    rows = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR)
    valid = rows < R
    acc = tl.zeros((BR,), tl.float32)
    for d0 in range(0, D, BD):
        offs = rows[:, None] * D + d0 + tl.arange(0, BD)[None, :]
        a = tl.load(a_ptr + offs, mask=valid[:, None], other=0.0).to(tl.float32)
        acc += tl.sum(a * tl.load(b_ptr + offs, mask=valid[:, None], other=0.0).to(tl.float32), axis=1)
    tl.store(out_ptr + rows, acc, mask=valid)


def row_dots(a, b):
    """(..., D) x (..., D) -> (...) fp32 row-wise dot products."""
    out = torch.empty(a.shape[:-1], device=a.device, dtype=torch.float32)
    d = a.shape[-1]
    _row_dots[(triton.cdiv(out.numel(), ROWS),)](a, b, out, out.numel(), D=d, BR=ROWS, BD=min(d, 128))
    return out


def fwd_attend_config():
    """The forward attend's settings (the module's tunables, read at call time)."""
    return dict(tile=TILE, col_tile=COL_TILE, bk=BLOCK_K, bn=BLOCK_N, warps=NUM_WARPS, stages=NUM_STAGES,
                maxnreg=ATTEND_MAX_NREG, prefetch=PREFETCH)


def fwd_scan_config():
    """The forward scan's settings (the module's tunables, read at call time)."""
    return dict(bk=STATE_BLOCK_K, bn=STATE_BLOCK_N, warps=STATE_NUM_WARPS, stages=STATE_NUM_STAGES,
                prefetch=STATE_PREFETCH, weight_first=STATE_WEIGHT_FIRST, min_programs=SCAN_MIN_PROGRAMS,
                small_bk=SMALL_STATE_BLOCK_K, small_bn=SMALL_STATE_BLOCK_N, small_warps=SMALL_STATE_NUM_WARPS,
                small_weight_first=SMALL_STATE_WEIGHT_FIRST)


def inference_scan_config(chunk):
    """The forward scan's settings when no backward follows: with INFERENCE_WEIGHT_FIRST, weighted first in the main
    blocks, and in the small ones up to chunks of INFERENCE_SMALL_WEIGHT_MAX_CHUNK."""
    cfg = fwd_scan_config()
    if INFERENCE_WEIGHT_FIRST:
        cfg.update(weight_first=True, small_weight_first=chunk <= INFERENCE_SMALL_WEIGHT_MAX_CHUNK)
    return cfg


def attend(x, y, z, state, vec, rg, cg, rs, *, chunk, scale, config=None, tile=None, state_t=False, reverse=False,
           extra=None, row_extra=False, col_extra=False, fwd_m=None, dot_w=None, ds_from=None):
    """Launch `_chunk_attend`; x, y (BH, T, KD), z (BH, T, ND), state (BH, n, DQK, DV) read as KD x ND
    (transposed when state_t), vec (BH, n, ND) fp32 the state's extra, or with fwd_m the n states' parts
    (BH, NC, KD, 16) in x's dtype (`n_state_parts`). `config`: tile (rows per program), col_tile (optional:
    columns per step of the intra-chunk loop, <= tile; default tile), bk, bn, warps, stages, maxnreg, prefetch
    (optional, see PREFETCH) (default: the forward's); `tile` (if given) overrides the config's. Returns out
    (BH, T, ND) [, den, s when fwd_m is given] [, the fp32 row dots of out with dot_w (BH, T, ND) when given].
    With ds_from = (h, s, m), the row extra is computed here: ds' = -(x . h) sign(s) [|s| > exp(-m)], written into
    `extra` (BH, TP) fp32."""
    cfg = config or fwd_attend_config()
    tile = min(tile or cfg["tile"], chunk)
    col_tile = min(cfg.get("col_tile") or tile, tile)
    bh, t, kd = x.shape
    nd = z.shape[-1]
    tp = rg.shape[-1]
    n_states, d0, d1 = state.shape[1:]
    n_vec = vec.shape[1]
    st_k, st_n = (1, d1) if state_t else (d1, 1)
    out = torch.empty_like(z)
    fwd = fwd_m is not None
    row_ds = ds_from is not None
    den = torch.empty(bh, t, device=x.device, dtype=torch.float32) if fwd else out
    s = torch.empty_like(den) if fwd else out
    h_ds, m = out, fwd_m if fwd else rg
    if row_ds:
        h_ds, s, m = ds_from
    block_k, block_n = min(cfg["bk"], kd), min(cfg["bn"], nd)
    row_dot = dot_w is not None and block_n == nd
    dots = torch.empty(bh, t, device=x.device, dtype=torch.float32) if row_dot else out
    grid = (tp // tile * triton.cdiv(nd, block_n), bh)
    _chunk_attend[grid](x, y, z, state, vec, rg, cg, rs, extra if extra is not None else rg, m, out, den, s,
                        dot_w if row_dot else out, dots, h_ds, t, tp, n_states, n_vec, st_k, st_n, scale, EPS, KD=kd,
                        ND=nd, CHUNK=chunk, BR=tile, BC=col_tile, BK=block_k, BN=block_n, REVERSE=reverse, FWD=fwd,
                        ROW_EXTRA=row_extra, COL_EXTRA=col_extra, ROW_DOT=row_dot, ROW_DS=row_ds,
                        PREFETCH=bool(cfg.get("prefetch")), num_warps=cfg["warps"], num_stages=cfg["stages"],
                        maxnreg=cfg["maxnreg"])
    if dot_w is None:
        return (out, den, s) if fwd else out
    if not row_dot:  # rows split over several blocks (bn < ND)
        dots = row_dots(out, dot_w)
    return out, dots


def scan_is_narrow(bh, kd, nd, config=None):
    """Whether a state scan of bh heads (KD x ND states) would run fewer than min_programs programs with its
    main blocks (then it takes the small ones). `config`: as for state_scan (default: the forward's)."""
    cfg = config or fwd_scan_config()
    return triton.cdiv(kd, min(cfg["bk"], kd)) * triton.cdiv(nd, min(cfg["bn"], nd)) * bh < cfg["min_programs"]


def scan_blocks(cfg, narrow):
    """(BK, BN, warps, weighted first) of a scan config's main blocks, or with `narrow` its small ones."""
    if narrow:
        return cfg["small_bk"], cfg["small_bn"], cfg["small_warps"], bool(cfg.get("small_weight_first"))
    return cfg["bk"], cfg["bn"], cfg["warps"], bool(cfg.get("weight_first"))


def scan_stages(chunk, block_k, block_n, itemsize, stages, weighted):
    """Pipeline stages that fit in shared memory for a scan step's whole chunk of A (BK columns) and B (BN columns).
    Offline for sm_90a at chunks 128-512, the first stage took one chunk of both, each further one 0.52-0.68 of
    that (counted here as 0.7): at chunk 512, 64 x 128 blocks get one stage (two need 329,728 bytes), 64 x 64 two.
    Weighted first, both tiles get a buffer per stage (270,336 bytes for two stages of 64 x 64 at chunk 512)."""
    one = chunk * (block_k + block_n) * itemsize
    return max(1, min(stages, 1 + int((SHARED_MEMORY - one) / ((1.0 if weighted else 0.7) * one))))


@triton.jit
def _n_state_parts(vec_ptr, parts_ptr, n_vec, NC, KD: tl.constexpr):
    """parts[bh, c] (KD x 16) = vec[bh, c] as hi + lo in parts' dtype, in columns 0 and 1 (the rest 0)."""
    c, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    rk = tl.arange(0, KD)
    vec = tl.load(vec_ptr + (bh * n_vec + c) * KD + rk)
    hi = vec.to(parts_ptr.dtype.element_ty)
    lo = (vec - hi.to(tl.float32)).to(parts_ptr.dtype.element_ty)
    col = tl.arange(0, 16)[None, :]
    tl.store(parts_ptr + ((bh * NC + c) * KD + rk[:, None]) * 16 + col,
             tl.where(col == 0, hi[:, None], tl.where(col == 1, lo[:, None], 0.0)))


def n_state_parts(vec, n_chunks, dtype):
    """The n states before each chunk, vec (BH, >= NC, KD) fp32, as (BH, NC, KD, 16) in `dtype`: n = hi + lo in
    columns 0 and 1, zeros in the rest (16: the narrowest dot), so that the forward attend's q . n is a tensor-core
    dot keeping about 16 bits of n in bf16 (8 for hi alone). A pass of its own: written by the forward scan's
    first DV block, it slowed the 64K scan, whose programs all run at once, by 0.06 ms (linear.md, session 7)."""
    bh, n_vec, kd = vec.shape
    parts = torch.empty(bh, n_chunks, kd, 16, device=vec.device, dtype=dtype)
    _n_state_parts[(n_chunks, bh)](vec, parts, n_vec, n_chunks, KD=kd)
    return parts


@triton.jit
def _weight_chunks(x_ptr, wlog_ptr, coef_ptr, out_ptr, sums_ptr, T, TP, NC, D: tl.constexpr, CHUNK: tl.constexpr,
                   ROWS: tl.constexpr, HAS_COEF: tl.constexpr):
    """One chunk of one batch*head: out = x exp(wlog) in out's dtype, and sums[bh, c] = that chunk's sum of
    x exp(wlog) (times coef) in fp32."""
    c, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    cd = tl.arange(0, D)
    acc = tl.zeros((D,), tl.float32)
    for r0 in range(0, CHUNK, ROWS):
        rows = c * CHUNK + r0 + tl.arange(0, ROWS)
        valid = rows < T
        offs = bh * T * D + rows[:, None] * D + cd[None, :]
        w = tl.exp(tl.load(wlog_ptr + bh * TP + rows))
        xw = tl.load(x_ptr + offs, mask=valid[:, None], other=0.0).to(tl.float32) * w[:, None]
        tl.store(out_ptr + offs, xw.to(out_ptr.dtype.element_ty), mask=valid[:, None])
        if HAS_COEF:
            xw *= tl.load(coef_ptr + bh * TP + rows)[:, None]
        acc += tl.sum(xw, axis=0)
    tl.store(sums_ptr + (bh * NC + c) * D + cd, acc)


WEIGHT_ROWS = 64  # tunable: 16, 32, 64, 128 (rows per step of `_weight_chunks`)
WEIGHT_WARPS = 4  # tunable: 4, 8


def weight_chunks(x, wlog, chunk, coef=None):
    """x (BH, T, D) times exp(wlog) (BH, TP = NC * chunk) per row, in x's dtype, and per chunk the fp32 sum of
    x exp(wlog) coef (coef (BH, TP) fp32, or none) over its rows: (BH, NC, D)."""
    bh, t, d = x.shape
    nc = wlog.shape[-1] // chunk
    out = torch.empty_like(x)
    sums = torch.empty(bh, nc, d, device=x.device, dtype=torch.float32)
    _weight_chunks[(nc, bh)](x, wlog, coef if coef is not None else wlog, out, sums, t, wlog.shape[-1], nc, D=d,
                             CHUNK=chunk, ROWS=min(WEIGHT_ROWS, chunk), HAS_COEF=coef is not None,
                             num_warps=WEIGHT_WARPS)
    return out, sums


def state_scan(a, b, wlog, decay, *, chunk, reverse=False, coef=None, pair=None, config=None):
    """Launch `_chunk_state_scan` (after `weight_chunks` where the config says weight_first): states (BH, NC, KD, ND)
    in a's dtype, vec (BH, NC (+1 forward), KD) fp32,
    and in forward order the final state (BH, KD, ND) fp32; reversed, with pair = the forward's (states, vec),
    the Frobenius products <pair states[c + 1], states[c]> + <pair vec[c + 1], vec[c]> (BH, NC) fp32 (else None).
    `config`: bk, bn, warps, stages, prefetch (optional), weight_first (optional), min_programs, small_bk, small_bn,
    small_warps, small_weight_first (optional) (default: the forward's)."""
    cfg = config or fwd_scan_config()
    bh, t, kd = a.shape
    nd = b.shape[-1]
    nc = decay.shape[-1]
    n_states = nc if reverse else nc + 1
    states = torch.empty(bh, nc, kd, nd, device=a.device, dtype=a.dtype)
    final = None if reverse else torch.empty(bh, kd, nd, device=a.device, dtype=torch.float32)
    vec = torch.empty(bh, n_states, kd, device=a.device, dtype=torch.float32)
    block_k, block_n, warps, weighted = scan_blocks(cfg, scan_is_narrow(bh, kd, nd, cfg))
    block_k, block_n = min(block_k, kd), min(block_n, nd)
    sums = vec
    if weighted:  # the weights and coef go into a and the sums: the scan reads neither
        a, sums = weight_chunks(a, wlog, chunk, coef)
    grid = (triton.cdiv(kd, block_k), triton.cdiv(nd, block_n), bh)
    paired = reverse and pair is not None
    pair_states, pair_vec = pair if paired else (states, vec)
    # per program and chunk its rows' products; the n states' in an extra DV block
    products = torch.empty(bh, grid[0], grid[1] + 1, nc, block_k, device=a.device, dtype=torch.float32) if paired \
        else vec
    _chunk_state_scan[grid](a, b, wlog, decay, coef if coef is not None else wlog, sums, states,
                            states if final is None else final, vec, pair_states, pair_vec, products, t,
                            nc * chunk, nc, n_states, KD=kd, ND=nd, CHUNK=chunk, BK=block_k, BN=block_n,
                            REVERSE=reverse, HAS_COEF=coef is not None and not weighted,
                            PREFETCH=bool(cfg.get("prefetch")), PAIR=paired, WEIGHTED=weighted, num_warps=warps,
                            num_stages=scan_stages(chunk, block_k, block_n, a.element_size(), cfg["stages"], weighted))
    if reverse:
        return states, vec, products.sum((1, 2, 4)) if paired else None
    return states, vec, final


def mlstm_chunkwise_fwd(q, k, v, i, f, chunk=None, tile=None, inference=False):
    """h (B, H, T, DV) and what the backward and a following decode need:
    (h, C states before each chunk (B*H, NC, DQK, DV) in q's dtype, final C (B*H, DQK, DV) fp32,
    n states (B*H, NC+1, DQK), den (B*H, T), s (B*H, T), m_chunk (B*H, NC)).
    `inference`: no backward follows (the scan's settings then: `inference_scan_config`)."""
    chunk = chunk or CHUNK
    tile = min(tile, chunk) if tile else None  # None: each attend's own setting
    check_inputs(q, k, v, i, f, chunk, tile)
    b, h, t, dqk = q.shape
    dv = v.shape[-1]
    q, k, v = (x.reshape(b * h, t, x.shape[-1]).contiguous() for x in (q, k, v))
    gates = gate_terms(i.reshape(b * h, t), f.reshape(b * h, t), chunk)
    c_states, n_states, c_final = state_scan(k, v, gates["weight"], gates["decay"], chunk=chunk,
                                             config=inference_scan_config(chunk) if inference else None)
    n_parts = n_state_parts(n_states, gates["n_chunks"], q.dtype)
    out, den, s = attend(q, k, v, c_states, n_parts, gates["row"], gates["col"], gates["inter"], chunk=chunk,
                         tile=tile, scale=1.0 / math.sqrt(dqk), fwd_m=gates["m"])
    return out.view(b, h, t, dv), c_states, c_final, n_states, den, s, gates["m_chunk"]


def entry(q, k, v, i, f):
    return mlstm_chunkwise_fwd(q, k, v, i, f)[0]
