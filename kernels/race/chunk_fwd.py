"""Causal RACE attention forward (global normalization): soft hashing, then a chunked causal
linear-attention scan with feature dimension S. Seed of the `race_causal` task; the library op
(kernels/race/ops.py) uses `race_fwd`, which also returns what the backward needs, and, with
causal=False, computes non-causal RACE with the same kernels (every segment starts from the totals).

  1. `_race_hash`: phi(q) and phi(k) (B, H, T, S) in the input dtype, every chunk of rows its own
     program: t = tanh(x W^T), and log phi[l, r] = beta t_l . v_r - sum_p log 2cosh(beta t_lp)
     (the corner softmax's normalizer factorizes over the P hyperplanes), i.e.
     [beta t, log 2cosh(beta t)] @ HM with a fixed +-1 / 0 matrix HM. phi is S/D (1/4 at (3,3))
     the size of q, so writing it and reading it back costs less than hashing inside the scans,
     whose programs walk their chunks one after another: there every step's latency counts.
  2. `_race_segment_sums`: per (segment of the sequence, batch*head), the segment's sum of
     phi(k) v^T (kept as its transpose, DV x S) and of phi(k) (S), fp32. A single running state
     per head would use only B*H programs, hence the segments.
  3. an exclusive prefix over segments (torch; a few KB per segment).
  4. `_race_fwd_chunks`: each segment scans its chunks from its prefix state, one program per
     block of BV value columns:
     o = (mask(phi(q) phi(k)^T) v + phi(q) B) / (rowsum(mask(phi(q) phi(k)^T)) + phi(q) . A).
Every product's M side (rows of its output) is a chunk or DV, at least 64, the M of one Hopper
wgmma tile (S is 32 or 64 and would not be); the fp32 states meet bf16 data in two bf16 products
(state = hi + lo), which keeps about 16 bits of the state.
"""
import functools
import math

import torch
import triton
import triton.language as tl

CHUNK = 64  # tunable: 64, 128
NUM_WARPS = 4  # tunable: 4, 8
NUM_STAGES = 2  # tunable: 2, 3
TARGET_PROGRAMS = 1024  # tunable: 264, 528, 1024, 2048
BLOCK_V = 128  # tunable: 64, 128
HASH_ROWS = 128  # tunable: 64, 128
HASH_WARPS = 8  # tunable: 4, 8


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
def _race_segment_sums(phk_ptr, v_ptr, sums_ptr, counts_ptr, T, seg_len, n_seg, DV: tl.constexpr, S: tl.constexpr,
                       CHUNK: tl.constexpr):
    seg, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    phk_ptr += bh * T * S
    v_ptr += bh * T * DV
    cv, cs = tl.arange(0, DV), tl.arange(0, S)
    sums = tl.zeros((DV, S), tl.float32)  # (phi(k) v^T)^T: DV as the product's M side
    counts = tl.zeros((S,), tl.float32)
    for start in range(seg * seg_len, tl.minimum(T, (seg + 1) * seg_len), CHUNK):
        rows = start + tl.arange(0, CHUNK)
        valid = rows < T
        phk = tl.load(phk_ptr + rows[:, None] * S + cs[None, :], mask=valid[:, None], other=0.0)
        v = tl.load(v_ptr + rows[:, None] * DV + cv[None, :], mask=valid[:, None], other=0.0)
        sums += tl.dot(tl.trans(v), phk)
        counts += tl.sum(phk.to(tl.float32), axis=0)
    out = bh * n_seg + seg
    tl.store(sums_ptr + out * DV * S + cv[:, None] * S + cs[None, :], sums)
    tl.store(counts_ptr + out * S + cs, counts)


@triton.jit
def _race_fwd_chunks(phq_ptr, phk_ptr, v_ptr, sums_ptr, counts_ptr, o_ptr, den_ptr, T, seg_len, n_seg,
                     DV: tl.constexpr, BV: tl.constexpr, S: tl.constexpr, CHUNK: tl.constexpr,
                     CAUSAL: tl.constexpr):
    # program (value block, segment, batch*head): the value blocks of a segment run side by side,
    # so all but the first read its phi from L2
    vb, seg, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    phq_ptr += bh * T * S
    phk_ptr += bh * T * S
    v_ptr += bh * T * DV
    o_ptr += bh * T * DV
    den_ptr += bh * T
    cv, cs = vb * BV + tl.arange(0, BV), tl.arange(0, S)
    state = bh * n_seg + seg
    sums = tl.load(sums_ptr + state * DV * S + cv[:, None] * S + cs[None, :])  # (phi(k) v^T)^T before the segment
    counts = tl.load(counts_ptr + state * S + cs)  # phi(k) before the segment
    causal = tl.arange(0, CHUNK)[:, None] >= tl.arange(0, CHUNK)[None, :]
    for start in range(seg * seg_len, tl.minimum(T, (seg + 1) * seg_len), CHUNK):
        rows = start + tl.arange(0, CHUNK)
        valid = rows < T
        phq = tl.load(phq_ptr + rows[:, None] * S + cs[None, :], mask=valid[:, None], other=0.0)
        num = _dot_hl(phq, tl.trans(sums))
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


def segment_length(t: int, bh: int, chunk: int, seg_chunks: int = 0) -> int:
    """Tokens per segment: enough segments that B*H*segments ~ TARGET_PROGRAMS, whole chunks each."""
    if seg_chunks <= 0:
        seg_chunks = triton.cdiv(triton.cdiv(t, chunk), max(1, TARGET_PROGRAMS // bh))
    return seg_chunks * chunk


def starting_sums(x: torch.Tensor, causal: bool = True, reverse: bool = False) -> torch.Tensor:
    """Per-segment sums (dim 1) -> what each segment starts from: the sum over the segments before
    it (after it if reverse) when causal, over all of them when not."""
    if not causal:
        return x.sum(1, keepdim=True).expand_as(x).contiguous()
    return x.sum(1, keepdim=True) - x.cumsum(1) if reverse else x.cumsum(1) - x


def soft_hash(x, w32, hm, consts, beta):
    """phi(x) (B, H, T, S) in x's dtype, by `_race_hash`."""
    b, h, t, d = x.shape
    s = consts["L_PAD"] * consts["R"]
    phi = x.new_empty(b, h, t, s)
    rows = min(HASH_ROWS, max(16, triton.next_power_of_2(t)))
    _race_hash[(triton.cdiv(t, rows), b * h)](x, w32, hm, phi, t, beta, D=d, ROWS=rows, S=s, **consts,
                                              num_warps=HASH_WARPS)
    return phi


def race_fwd(q, k, v, w, beta=None, chunk=None, seg_chunks=0, causal=True):
    """Returns (o, den, sums, counts, phi(q), phi(k)): the backward rescans from the saved
    per-segment starting sums (prefixes when causal, totals when not) and the saved phi."""
    check_inputs(q, k, v, w)
    chunk = chunk or CHUNK
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    b, h, t, d = q.shape
    dv = v.shape[-1]
    beta = 1.0 / math.sqrt(d) if beta is None else float(beta)
    w32, hm, consts = hash_layout(w)
    phq, phk = soft_hash(q, w32, hm, consts, beta), soft_hash(k, w32, hm, consts, beta)
    s = phq.shape[-1]
    seg_len = segment_length(t, b * h, chunk, seg_chunks)
    n_seg = triton.cdiv(t, seg_len)
    summed = n_seg > 1 or not causal  # else the one segment starts from zero
    sums = (torch.empty if summed else torch.zeros)(b * h, n_seg, dv, s, device=q.device, dtype=torch.float32)
    counts = (torch.empty if summed else torch.zeros)(b * h, n_seg, s, device=q.device, dtype=torch.float32)
    launch = dict(S=s, CHUNK=chunk, num_warps=NUM_WARPS, num_stages=NUM_STAGES)
    if summed:
        _race_segment_sums[(n_seg, b * h)](phk, v, sums, counts, t, seg_len, n_seg, DV=dv, **launch)
        sums, counts = starting_sums(sums, causal), starting_sums(counts, causal)
    o = torch.empty_like(v)
    den = torch.empty(b, h, t, device=q.device, dtype=torch.float32)
    bv = min(BLOCK_V, dv)
    _race_fwd_chunks[(dv // bv, n_seg, b * h)](phq, phk, v, sums, counts, o, den, t, seg_len, n_seg, DV=dv, BV=bv,
                                               CAUSAL=causal, **launch)
    return o, den, sums, counts, phq, phk


def entry(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return race_fwd(q, k, v, w)[0]
