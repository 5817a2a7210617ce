"""Causal RACE attention forward (global normalization): soft hashing, then a chunked causal
linear-attention scan with feature dimension S. Seed of the `race_causal` task; the library op
(kernels/race/ops.py) uses `race_fwd`, which also returns what the backward needs, and, with
causal=False, computes non-causal RACE with the same kernels (every segment starts from the totals).

The hash: t = tanh(x W^T), and log phi[l, r] = beta t_l . v_r - sum_p log 2cosh(beta t_lp) (the
corner softmax's normalizer factorizes over the P hyperplanes), i.e. [beta t, log 2cosh(beta t)] @ HM
with a fixed +-1 / 0 matrix HM: two small products per chunk of rows (`_hash_logits`).

  1. `_race_segment_sums`: per (segment of the sequence, batch*head), the segment's sum of
     phi(k) v^T (kept as its transpose, DV x S) and of phi(k) (S), fp32, into the segment's row of
     `state`. It reads k and hashes it, and writes phi(k) (S/D the size of k: 1/4 at (3,3)) for the
     output scan and the backward. A single running state per head would use only B*H programs,
     hence the segments.
  2. `_segment_prefix`: the inclusive prefix of `state` over segments, in place (a few KB per segment).
  3. `_race_fwd_chunks`: each segment scans its chunks from the prefix before it, one program per
     block of BV value columns, hashing q on the way (phi(q) is written only when a backward will
     need it): o = (mask(phi(q) phi(k)^T) v + phi(q) B) / (rowsum(mask(phi(q) phi(k)^T)) + phi(q) . A).
So the forward reads q, k once, v twice, and moves phi(k) twice: 5.5 tensor passes at (3,3) where the
bound counts 4. At S >= 64 buckets ((4,4)) the output scan with the hash inside spills and measured
slower, so there (`FUSED_HASH_WIDE`) `_race_hash` writes phi(q) and phi(k) first and the scans read them.
Every product's M side (rows of its output) is a chunk or DV, at least 64, the M of one Hopper
wgmma tile (S is 32 or 64 and would not be). The output scan's phi(q) . state product rounds the fp32
state to the input dtype (`SPLIT_STATE`: measured as accurate as two products, hi + lo, for a bf16 output, and
faster); the backward's products keep the state as hi + lo (`_dot_hl`, about 16 bits).
"""
import functools
import math

import torch
import triton
import triton.language as tl

CHUNK = 64  # tunable: 64, 128
NUM_WARPS = 4  # tunable: 4, 8
# from this many buckets ((4,4)) the settings named _WIDE apply (`by_width`)
WIDE_BUCKETS = 64
NUM_STAGES = 2  # tunable: 2, 3 (the forward's and the backward's scans)
NUM_STAGES_WIDE = 3  # the same at S >= 64: 4M (4,4) forward+backward 41.7 against 43.6 ms at 2; (3,3) 34.9 against 27.6
# programs per scan (B*H*segments): 512 measured 1-9% faster than 1024 at (3,3), a constant ~50 us that fits
# torch's serial cumsum over the segments (since replaced by `_segment_prefix`)
TARGET_PROGRAMS = 512  # tunable: 512, 1024, 2048
BLOCK_V = 128  # tunable: 64, 128
HASH_ROWS = 128  # tunable: 64, 128
HASH_WARPS = 8  # tunable: 4, 8 (`_race_hash` and its backward)
HASH_WARPS_WIDE = 4  # the same at S >= 64: 4M (4,4) forward+backward 43.7 against 48.0 ms at 8 (linear.md)
SUMS_WARPS = 4  # tunable: 4, 8
FUSED_HASH = True  # phi(k) computed in the segment sums, phi(q) in the output scan (False: `_race_hash` first)
# at S >= 64 buckets ((4,4)) the fused output scan spills (255 registers + 80 B) and measured slower
# (docs/benchmarks/linear.md): there the hash runs first, and the scans keep 1024 programs
FUSED_HASH_WIDE = False
TARGET_PROGRAMS_WIDE = 1024
# the output scan's phi(q) . state product: the fp32 state as two input-dtype parts (about 16 bits), or one (8 bits
# in bf16, like the output it feeds). Split, it is 2.1 of the scan's 4.7 MFLOP per chunk at S = 64, DV = 128.
SPLIT_STATE = False
SPLIT_STATE_WIDE = False


@triton.jit
def _dot_hl(a, b):
    """a (bf16/fp16) @ b (fp32), b split in two input-dtype parts (hi + lo): about 16 bits of b."""
    hi = b.to(a.dtype)
    return tl.dot(a, hi) + tl.dot(a, (b - hi.to(tl.float32)).to(a.dtype))


@triton.jit
def _dot_lh(a, b):
    """a (fp32) @ b (bf16/fp16 holding exact small integers), a split in two b-dtype parts."""
    hi = a.to(b.dtype)
    return tl.dot(hi, b) + tl.dot((a - hi.to(tl.float32)).to(b.dtype), b)


@triton.jit
def _load_wt(w_ptr, D: tl.constexpr, P: tl.constexpr, L: tl.constexpr, P_PAD: tl.constexpr, L_PAD: tl.constexpr):
    """The hyperplanes w (L, P, D) fp32 as wt (D, P_PAD * L_PAD): W[l, p] in column p * L_PAD + l, zero padded."""
    col = tl.arange(0, P_PAD * L_PAD)
    p, table = col // L_PAD, col % L_PAD
    offs = table * P * D + p * D
    return tl.load(w_ptr + offs[None, :] + tl.arange(0, D)[:, None], mask=((p < P) & (table < L))[None, :], other=0.0)


@triton.jit
def _hash_logits(x, wt, hm, beta):
    """x (C, D) -> (t = tanh(x W^T), beta t, log phi), the last (C, S) before the padded-table mask;
    wt and hm in x's dtype."""
    C: tl.constexpr = x.shape[0]
    HW: tl.constexpr = wt.shape[1]
    t = tl.dot(x, wt)
    t = 1.0 - 2.0 / (tl.exp(2.0 * t) + 1.0)  # tanh
    z = beta * t
    lc = tl.abs(z) + tl.log(1.0 + tl.exp(-2.0 * tl.abs(z)))  # log 2cosh(z), without overflow
    zl = tl.reshape(tl.join(z, lc), (C, 2 * HW))  # columns z_0, lc_0, z_1, lc_1, ...
    return t, z, _dot_lh(zl, hm)


@triton.jit
def _race_hash(x_ptr, w_ptr, hm_ptr, phi_ptr, T, beta, D: tl.constexpr, ROWS: tl.constexpr, S: tl.constexpr,
               P: tl.constexpr, L: tl.constexpr, P_PAD: tl.constexpr, L_PAD: tl.constexpr, R: tl.constexpr):
    """phi(x) for ROWS rows of one batch*head; zero in the padded tables (columns >= L * R)."""
    blk, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    cd, cs = tl.arange(0, D), tl.arange(0, S)
    rows = blk * ROWS + tl.arange(0, ROWS)
    valid = rows < T
    wt = _load_wt(w_ptr, D, P, L, P_PAD, L_PAD).to(x_ptr.dtype.element_ty)
    hm = tl.load(hm_ptr + tl.arange(0, 2 * P_PAD * L_PAD)[:, None] * S + cs[None, :]).to(x_ptr.dtype.element_ty)
    x = tl.load(x_ptr + bh * T * D + rows[:, None] * D + cd[None, :], mask=valid[:, None], other=0.0)
    phi = tl.where(cs[None, :] < L * R, tl.exp(_hash_logits(x, wt, hm, beta)[2]), 0.0)
    tl.store(phi_ptr + bh * T * S + rows[:, None] * S + cs[None, :], phi.to(phi_ptr.dtype.element_ty),
             mask=valid[:, None])


@triton.jit
def _phi_chunk(x_ptr, rows, valid, wt, hm, beta, D: tl.constexpr, S: tl.constexpr, L: tl.constexpr, R: tl.constexpr):
    """phi of one chunk of rows of x (x_ptr at its batch*head), in x's dtype; zero in the padded tables
    and in rows past T."""
    x = tl.load(x_ptr + rows[:, None] * D + tl.arange(0, D)[None, :], mask=valid[:, None], other=0.0)
    keep = valid[:, None] & (tl.arange(0, S)[None, :] < L * R)  # rows past T: zero, like a masked load of phi
    return tl.where(keep, tl.exp(_hash_logits(x, wt, hm, beta)[2]), 0.0).to(x_ptr.dtype.element_ty)


@triton.jit
def _race_segment_sums(x_ptr, w_ptr, hm_ptr, phk_ptr, v_ptr, state_ptr, T, seg_len, n_seg, beta, D: tl.constexpr,
                       DV: tl.constexpr, S: tl.constexpr, CHUNK: tl.constexpr, P: tl.constexpr, L: tl.constexpr,
                       P_PAD: tl.constexpr, L_PAD: tl.constexpr, R: tl.constexpr, HASH: tl.constexpr):
    """Per (segment, batch*head): the segment's sum of phi(k) v^T (kept as its transpose, DV x S)
    in rows 0..DV-1 of its state and of phi(k) in row DV, fp32. With HASH, x is k: phi(k) is
    computed here and written to phk_ptr; without, phk_ptr holds it already (x_ptr unused)."""
    seg, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    phk_ptr += bh * T * S
    v_ptr += bh * T * DV
    x_ptr += bh * T * D
    cv, cs = tl.arange(0, DV), tl.arange(0, S)
    if HASH:
        wt = _load_wt(w_ptr, D, P, L, P_PAD, L_PAD).to(x_ptr.dtype.element_ty)
        hm = tl.load(hm_ptr + tl.arange(0, 2 * P_PAD * L_PAD)[:, None] * S + cs[None, :]).to(x_ptr.dtype.element_ty)
    sums = tl.zeros((DV, S), tl.float32)  # (phi(k) v^T)^T: DV as the product's M side
    counts = tl.zeros((S,), tl.float32)
    for start in range(seg * seg_len, tl.minimum(T, (seg + 1) * seg_len), CHUNK):
        rows = start + tl.arange(0, CHUNK)
        valid = rows < T
        if HASH:
            phk = _phi_chunk(x_ptr, rows, valid, wt, hm, beta, D, S, L, R)
            tl.store(phk_ptr + rows[:, None] * S + cs[None, :], phk, mask=valid[:, None])
        else:
            phk = tl.load(phk_ptr + rows[:, None] * S + cs[None, :], mask=valid[:, None], other=0.0)
        v = tl.load(v_ptr + rows[:, None] * DV + cv[None, :], mask=valid[:, None], other=0.0)
        sums += tl.dot(tl.trans(v), phk)
        counts += tl.sum(phk.to(tl.float32), axis=0)
    out = (bh * n_seg + seg) * (DV + 1) * S
    tl.store(state_ptr + out + cv[:, None] * S + cs[None, :], sums)
    tl.store(state_ptr + out + DV * S + cs, counts)


@triton.jit
def _segment_prefix(x_ptr, n_seg, width, ROWS: tl.constexpr, BLOCK: tl.constexpr, REVERSE: tl.constexpr):
    """In place over x (B*H, n_seg, width) fp32, per batch*head and block of BLOCK columns: the inclusive
    prefix over segments, or with REVERSE the exclusive suffix (the sum over the segments after each).
    ROWS segments per step, loaded at once: torch's cumsum over a middle dim walks one segment per
    step, one memory latency each (about 0.4 us: 50 us at 128 segments, measured as a constant offset)."""
    blk, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    cols = blk * BLOCK + tl.arange(0, BLOCK)
    x_ptr += bh * n_seg * width
    carry = tl.zeros((BLOCK,), tl.float32)
    for i in range(0, tl.cdiv(n_seg, ROWS)):
        if REVERSE:
            rows = n_seg - (i + 1) * ROWS + tl.arange(0, ROWS)
        else:
            rows = i * ROWS + tl.arange(0, ROWS)
        mask = ((rows >= 0) & (rows < n_seg))[:, None] & (cols < width)[None, :]
        offs = rows[:, None].to(tl.int64) * width + cols[None, :]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0)
        if REVERSE:
            y = tl.cumsum(x, axis=0, reverse=True) - x + carry[None, :]
        else:
            y = tl.cumsum(x, axis=0) + carry[None, :]
        tl.store(x_ptr + offs, y, mask=mask)
        carry += tl.sum(x, axis=0)


def segment_prefix(x: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """x (B*H, n_seg, ...) fp32 contiguous, in place: inclusive prefix over dim 1 (reverse: exclusive suffix)."""
    bh, n_seg = x.shape[:2]
    width = x[0, 0].numel()
    block = min(128, triton.next_power_of_2(width))
    rows = min(32, triton.next_power_of_2(n_seg))
    _segment_prefix[(triton.cdiv(width, block), bh)](x, n_seg, width, ROWS=rows, BLOCK=block, REVERSE=reverse,
                                                     num_warps=4)
    return x


@triton.jit
def _load_start(state_ptr, bh, seg, n_seg, cv, cs, DV: tl.constexpr, S: tl.constexpr, CAUSAL: tl.constexpr):
    """What a segment starts from, out of the inclusive prefix over segments (state (B*H, n_seg, DV + 1, S)):
    rows cv of (phi(k) v^T)^T and phi(k) summed over the earlier segments (CAUSAL; zero for the first),
    else over all of them (the last prefix)."""
    if CAUSAL:
        src = (bh * n_seg + seg - 1) * (DV + 1) * S
        first = cs < tl.where(seg > 0, S, 0)  # a tensor mask (the interpreter takes no scalar one)
        sums = tl.load(state_ptr + src + cv[:, None] * S + cs[None, :], mask=first[None, :], other=0.0)
        counts = tl.load(state_ptr + src + DV * S + cs, mask=first, other=0.0)
    else:
        src = (bh * n_seg + n_seg - 1) * (DV + 1) * S
        sums = tl.load(state_ptr + src + cv[:, None] * S + cs[None, :])
        counts = tl.load(state_ptr + src + DV * S + cs)
    return sums, counts


@triton.jit
def _race_fwd_chunks(x_ptr, w_ptr, hm_ptr, phq_ptr, phk_ptr, v_ptr, state_ptr, o_ptr, den_ptr, T, seg_len, n_seg,
                     beta, D: tl.constexpr, DV: tl.constexpr, BV: tl.constexpr, S: tl.constexpr,
                     CHUNK: tl.constexpr, P: tl.constexpr, L: tl.constexpr, P_PAD: tl.constexpr,
                     L_PAD: tl.constexpr, R: tl.constexpr, CAUSAL: tl.constexpr, HASH: tl.constexpr,
                     SAVE: tl.constexpr, SPLIT: tl.constexpr):
    """With HASH, x is q: phi(q) is computed here (and written to phq_ptr, with den, if SAVE, by
    the first value block); without, phq_ptr holds it already."""
    # program (value block, segment, batch*head): the value blocks of a segment run side by side,
    # so all but the first read its q (or phi) from L2
    vb, seg, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    x_ptr += bh * T * D
    phq_ptr += bh * T * S
    phk_ptr += bh * T * S
    v_ptr += bh * T * DV
    o_ptr += bh * T * DV
    den_ptr += bh * T
    cv, cs = vb * BV + tl.arange(0, BV), tl.arange(0, S)
    if HASH:
        wt = _load_wt(w_ptr, D, P, L, P_PAD, L_PAD).to(x_ptr.dtype.element_ty)
        hm = tl.load(hm_ptr + tl.arange(0, 2 * P_PAD * L_PAD)[:, None] * S + cs[None, :]).to(x_ptr.dtype.element_ty)
    # (phi(k) v^T)^T and phi(k) before the segment
    sums, counts = _load_start(state_ptr, bh, seg, n_seg, cv, cs, DV, S, CAUSAL)
    causal = tl.arange(0, CHUNK)[:, None] >= tl.arange(0, CHUNK)[None, :]
    for start in range(seg * seg_len, tl.minimum(T, (seg + 1) * seg_len), CHUNK):
        rows = start + tl.arange(0, CHUNK)
        valid = rows < T
        if HASH:
            phq = _phi_chunk(x_ptr, rows, valid, wt, hm, beta, D, S, L, R)
            if SAVE:
                if vb == 0:
                    tl.store(phq_ptr + rows[:, None] * S + cs[None, :], phq, mask=valid[:, None])
        else:
            phq = tl.load(phq_ptr + rows[:, None] * S + cs[None, :], mask=valid[:, None], other=0.0)
        if SPLIT:
            num = _dot_hl(phq, tl.trans(sums))
        else:
            num = tl.dot(phq, tl.trans(sums).to(phq.dtype))
        den = tl.sum(phq.to(tl.float32) * counts[None, :], axis=1)
        if CAUSAL:  # the chunk's own keys; without CAUSAL, sums/counts already hold every key
            phk = tl.load(phk_ptr + rows[:, None] * S + cs[None, :], mask=valid[:, None], other=0.0)
            v = tl.load(v_ptr + rows[:, None] * DV + cv[None, :], mask=valid[:, None], other=0.0)
            a = tl.where(causal, tl.dot(phq, tl.trans(phk)), 0.0)
            num += tl.dot(a.to(v.dtype), v)
            den += tl.sum(a, axis=1)
            sums += tl.dot(tl.trans(v), phk)
            counts += tl.sum(phk.to(tl.float32), axis=0)
        tl.store(o_ptr + rows[:, None] * DV + cv[None, :], (num / den[:, None]).to(o_ptr.dtype.element_ty),
                 mask=valid[:, None])
        if SAVE:
            if vb == 0:
                tl.store(den_ptr + rows, den, mask=valid)


@functools.lru_cache(maxsize=64)
def _hash_matrix(p: int, n_tables: int, p_pad: int, l_pad: int, device: torch.device) -> torch.Tensor:
    """hm (2 HW, S): row 2h takes beta t_h to the corners' signs, row 2h + 1 takes log 2cosh(beta t_h)
    to minus one, in the columns of hyperplane h's table."""
    r = 2**p
    hm = torch.zeros(p_pad, l_pad, 2, l_pad, r, dtype=torch.float32)
    signs = 2.0 * ((torch.arange(r)[None, :] >> torch.arange(p)[:, None]) & 1) - 1.0  # (P, R)
    for table in range(n_tables):
        hm[:p, table, 0, table] = signs
        hm[:p, table, 1, table] = -1.0
    return hm.reshape(2 * p_pad * l_pad, l_pad * r).to(device)


def hash_consts(n_tables: int, p: int) -> dict:
    """The kernels' constexprs for L tables of P hyperplanes, padded so every product is >= 16 wide."""
    r = 2**p
    l_pad = max(triton.next_power_of_2(n_tables), triton.cdiv(16, r))
    p_pad = max(triton.next_power_of_2(p), triton.cdiv(16, l_pad))
    return dict(P=p, L=n_tables, P_PAD=p_pad, L_PAD=l_pad, R=r)


def hash_layout(w: torch.Tensor):
    """(L, P, D) hyperplanes -> (w fp32 contiguous, read by the kernels as wt (D, P_PAD * L_PAD): W[l, p]
    in column p * L_PAD + l; hm (2 P_PAD L_PAD, S), S = L_PAD * 2^P buckets (table l, corner r in
    column l * 2^P + r); constexprs)."""
    c = hash_consts(w.shape[0], w.shape[1])
    return w.float().contiguous(), _hash_matrix(w.shape[1], w.shape[0], c["P_PAD"], c["L_PAD"], w.device), c


def check_inputs(q, k, v, w):
    if q.dim() != 4 or q.shape != k.shape or q.shape[:-1] != v.shape[:-1]:
        raise ValueError(f"expected q, k (B, H, T, D) and v (B, H, T, DV); got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if w.dim() != 3 or w.shape[-1] != q.shape[-1]:
        raise ValueError(f"expected w (L, P, D={q.shape[-1]}), got {tuple(w.shape)}")
    for name, n in (("D", q.shape[-1]), ("DV", v.shape[-1])):
        if n < 16 or n & (n - 1):
            raise ValueError(f"{name}={n}: head sizes must be powers of two >= 16")
    if w.shape[1] > 8:
        raise ValueError(f"P={w.shape[1]} hyperplanes per table: at most 8 (2^P buckets per table)")


def segment_length(t: int, bh: int, chunk: int, seg_chunks: int = 0, s: int = 32) -> int:
    """Tokens per segment: enough segments that B*H*segments ~ TARGET_PROGRAMS (`by_width`), whole chunks each."""
    if seg_chunks <= 0:
        programs = by_width(s, TARGET_PROGRAMS, TARGET_PROGRAMS_WIDE)
        seg_chunks = triton.cdiv(triton.cdiv(t, chunk), max(1, programs // bh))
    return seg_chunks * chunk


def starting_sums(x: torch.Tensor, causal: bool = True, reverse: bool = False) -> torch.Tensor:
    """Per-segment sums (dim 1) -> what each segment starts from: the sum over the segments before
    it (after it if reverse) when causal, over all of them when not."""
    if not causal:
        return x.sum(1, keepdim=True).expand_as(x).contiguous()
    return x.sum(1, keepdim=True) - x.cumsum(1) if reverse else x.cumsum(1) - x


def by_width(s: int, narrow, wide):
    """A setting at S buckets: its _WIDE value from WIDE_BUCKETS up ((4,4)), else the plain one."""
    return wide if s >= WIDE_BUCKETS else narrow


def soft_hash(x, w32, hm, consts, beta):
    """phi(x) (B, H, T, S) in x's dtype, by `_race_hash`."""
    b, h, t, d = x.shape
    s = consts["L_PAD"] * consts["R"]
    phi = x.new_empty(b, h, t, s)
    rows = min(HASH_ROWS, max(16, triton.next_power_of_2(t)))
    _race_hash[(triton.cdiv(t, rows), b * h)](x, w32, hm, phi, t, beta, D=d, ROWS=rows, S=s, **consts,
                                              num_warps=by_width(s, HASH_WARPS, HASH_WARPS_WIDE))
    return phi


def race_fwd(q, k, v, w, beta=None, chunk=None, seg_chunks=0, causal=True, save=True):
    """Returns (o, den, state, phi(q), phi(k)): state (B*H, n_seg, DV + 1, S) fp32 is the inclusive
    prefix over segments of each segment's sums (rows < DV: (phi(k) v^T)^T; row DV: phi(k)), from
    which the scans start each segment (`_load_start`); the backward rescans from it and the saved
    phi. Without `save` (no backward to come), phi(q) and den are not written (None)."""
    check_inputs(q, k, v, w)
    chunk = chunk or CHUNK
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    b, h, t, d = q.shape
    dv = v.shape[-1]
    beta = 1.0 / math.sqrt(d) if beta is None else float(beta)
    w32, hm, consts = hash_layout(w)
    s = consts["L_PAD"] * consts["R"]
    seg_len = segment_length(t, b * h, chunk, seg_chunks, s)
    n_seg = triton.cdiv(t, seg_len)
    fused = by_width(s, FUSED_HASH, FUSED_HASH_WIDE)
    state = torch.empty(b * h, n_seg, dv + 1, s, device=q.device, dtype=torch.float32)
    launch = dict(D=d, DV=dv, S=s, CHUNK=chunk, **consts, num_warps=NUM_WARPS,
                  num_stages=by_width(s, NUM_STAGES, NUM_STAGES_WIDE))
    if fused:
        phk = k.new_empty(b, h, t, s)
        phq = q.new_empty(b, h, t, s) if save else phk
    else:
        phq, phk = soft_hash(q, w32, hm, consts, beta), soft_hash(k, w32, hm, consts, beta)
    if fused or n_seg > 1 or not causal:  # fused, the sums also make phi(k); else one causal segment needs none
        _race_segment_sums[(n_seg, b * h)](k, w32, hm, phk, v, state, t, seg_len, n_seg, beta, HASH=fused,
                                           **(launch | dict(num_warps=SUMS_WARPS)))
    if n_seg > 1:  # else the one segment starts from zero (causal) or reads its own sums (not)
        segment_prefix(state)
    o = torch.empty_like(v)
    den = torch.empty(b, h, t, device=q.device, dtype=torch.float32) if save else o
    bv = min(BLOCK_V, dv)
    _race_fwd_chunks[(dv // bv, n_seg, b * h)](q, w32, hm, phq, phk, v, state, o, den, t, seg_len, n_seg, beta, BV=bv,
                                               CAUSAL=causal, HASH=fused, SAVE=save,
                                               SPLIT=by_width(s, SPLIT_STATE, SPLIT_STATE_WIDE), **launch)
    return (o, den, state, phq, phk) if save else (o, None, None, None, None)


def entry(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return race_fwd(q, k, v, w)[0]
