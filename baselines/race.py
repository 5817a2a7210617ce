"""RACE attention: linear-time attention through differentiable LSH sketches (methods.md §1).

Soft hashing: table l has P Gaussian hyperplanes W_l (P x d) and R = 2^P corners
v_r in {-1, +1}^P (bit p of r set <=> v_r[p] = +1);
    phi_l(x) = softmax_r(beta * tanh(W_l x) . v_r),   beta = 1/sqrt(d) by default,
and phi(x) stacks the L tables: S = L * R buckets, each table's part sums to 1.

Two normalizations, both convex combinations of the values:
- "global" (the paper's algorithm, and the DEFAULT): out_t = sum_{j<=t} (phi(q_t).phi(k_j)) v_j
  / sum_{j<=t} phi(q_t).phi(k_j). phi(q).phi(k) = sum_l Pr[q, k share a soft bucket of table l]
  estimates L times the angular kernel (1 - theta/pi)^P, so these are exactly the weights the
  sketch estimates, normalized like softmax attention; it is normalized linear attention with
  feature map phi, so one chunked scan with a normalizer column computes it.
- "bucket" (per-bucket): out_t = (1/L) sum_s phi(q_t)[s] * B_t[s] / (A_t[s] + eps): the mean
  value of each bucket, mixed by the query's bucket weights (the 1/L makes the weights sum to
  one). Rarely hit buckets get the same say as crowded ones, which is not what the kernel
  estimate says, and the prefix A_t enters per bucket, so it needs an extra causal cumsum.

Everything here is plain PyTorch in the inputs' precision upcast to fp32 (float64 stays float64).
"""
import math

import torch

from baselines.task import Task, dtype_size, generator, randn, register, upcast

NORMALIZATIONS = ("global", "bucket")
BUCKET_EPS = 1e-6


def corners(p: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """(2^P, P): row r is the corner with v_r[p] = +1 where bit p of r is set, else -1."""
    r = torch.arange(2**p, device=device)[:, None]
    bits = (r >> torch.arange(p, device=device)[None, :]) & 1
    return (2 * bits - 1).to(dtype)


def soft_hash(x: torch.Tensor, w: torch.Tensor, beta: float | None = None) -> torch.Tensor:
    """x (..., d), w (L, P, d) -> phi(x) (..., L * 2^P), each table's 2^P entries a softmax."""
    n_tables, p, d = w.shape
    beta = 1.0 / math.sqrt(d) if beta is None else beta
    t = torch.tanh(torch.einsum("...d,lpd->...lp", x, w.to(x.dtype)))
    logits = beta * torch.einsum("...lp,rp->...lr", t, corners(p, x.dtype, x.device))
    return torch.softmax(logits, dim=-1).flatten(-2)


def _check(q, k, v, w, normalization):
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if q.shape != k.shape or q.shape[:-1] != v.shape[:-1]:
        raise ValueError(f"q, k must have one shape and v the same leading dims; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if w.dim() != 3 or w.shape[-1] != q.shape[-1]:
        raise ValueError(f"w must be (L, P, d={q.shape[-1]}), got {tuple(w.shape)}")


def race_attention(q, k, v, w, beta=None, causal=True, normalization="global"):
    """The quadratic form, obviously correct: q, k (B, H, T, d), v (B, H, T, dv), w (L, P, d)."""
    _check(q, k, v, w, normalization)
    dtype = q.dtype
    q, k, v = upcast(q), upcast(k), upcast(v)
    phq, phk = soft_hash(q, w, beta), soft_hash(k, w, beta)
    n_tables = w.shape[0]
    t = q.shape[-2]
    mask = torch.ones(t, t, dtype=torch.bool, device=q.device)
    if causal:
        mask = mask.tril()
    if normalization == "global":
        a = (phq @ phk.transpose(-1, -2)) * mask
        out = (a @ v) / a.sum(-1, keepdim=True)
    else:
        counts = phk.cumsum(-2) if causal else phk.sum(-2, keepdim=True)  # A_t (or A)
        a = ((phq / (counts + BUCKET_EPS)) @ phk.transpose(-1, -2)) * mask
        out = (a @ v) / n_tables
    return out.to(dtype)


def race_attention_sketch(q, k, v, w, beta=None, causal=True, normalization="global"):
    """The sketch form of the paper: bucket counts A and value sums B, prefix sums when causal.
    Memory O(T * S * dv): a second, independent formulation for tests at small sizes."""
    _check(q, k, v, w, normalization)
    dtype = q.dtype
    q, k, v = upcast(q), upcast(k), upcast(v)
    phq, phk = soft_hash(q, w, beta), soft_hash(k, w, beta)
    sums = phk[..., :, None] * v[..., None, :]  # (B, H, T, S, dv)
    if causal:
        counts, sums = phk.cumsum(-2), sums.cumsum(-3)
    else:
        counts, sums = phk.sum(-2, keepdim=True), sums.sum(-3, keepdim=True)
    if normalization == "global":
        out = torch.einsum("bhts,bhtsv->bhtv", phq, sums.expand(*phq.shape, v.shape[-1]))
        out = out / (phq * counts).sum(-1, keepdim=True)
    else:
        means = sums / (counts[..., None] + BUCKET_EPS)
        out = torch.einsum("bhts,bhtsv->bhtv", phq, means.expand(*phq.shape, v.shape[-1])) / w.shape[0]
    return out.to(dtype)


def race_causal_chunked(q, k, v, w, beta=None, chunk=1024):
    """Causal, global normalization, in chunks: quadratic inside a chunk, (S x dv) state across.
    Linear time and memory, so it is the eager baseline at millions of tokens."""
    _check(q, k, v, w, "global")
    dtype = q.dtype
    q, k, v = upcast(q), upcast(k), upcast(v)
    *lead, t, _ = q.shape
    n_buckets = w.shape[0] * 2 ** w.shape[1]
    state = q.new_zeros(*lead, n_buckets, v.shape[-1])
    count = q.new_zeros(*lead, n_buckets)
    out = torch.empty_like(v)
    for start in range(0, t, chunk):
        end = min(start + chunk, t)
        phq, phk = soft_hash(q[..., start:end, :], w, beta), soft_hash(k[..., start:end, :], w, beta)
        a = (phq @ phk.transpose(-1, -2)).tril()
        num = a @ v[..., start:end, :] + phq @ state
        den = a.sum(-1) + (phq * count[..., None, :]).sum(-1)
        out[..., start:end, :] = num / den[..., None]
        state = state + phk.transpose(-1, -2) @ v[..., start:end, :]
        count = count + phk.sum(-2)
    return out.to(dtype)


def hyperplanes(n_tables: int, p: int, d: int, gen: torch.Generator, dtype=torch.float32) -> torch.Tensor:
    """The L x P random Gaussian hyperplanes of one sketch."""
    return randn((n_tables, p, d), dtype, gen)


# --- the evolution task: causal RACE, global normalization, beta = 1/sqrt(d) ---

def reference(q, k, v, w):
    return race_causal_chunked(q, k, v, w)


def make_inputs(shape, dtype, seed, device):
    gen = generator(seed, device)
    b, h, t, d = shape["B"], shape["H"], shape["T"], shape["D"]
    q, k, v = (randn((b, h, t, d), dtype, gen) for _ in range(3))
    return q, k, v, hyperplanes(shape["L"], shape["P"], d, gen, torch.float32)


def flops(s) -> float:
    # per token-head: both hashes (2 x 2dLP), bucket softmaxes, then the scan:
    # phi(q).B_t and phi(q).A_t (2S(d+1)) and the state update (2S(d+1)).
    n_buckets = s["L"] * 2 ** s["P"]
    per_token = 4.0 * s["D"] * s["L"] * s["P"] + 4.0 * n_buckets * s["P"] + 4.0 * n_buckets * (s["D"] + 1)
    return per_token * s["B"] * s["H"] * s["T"]


def bytes_moved(s, dtype) -> float:
    return 4.0 * s["B"] * s["H"] * s["T"] * s["D"] * dtype_size(dtype) + 4.0 * s["L"] * s["P"] * s["D"]


def _shape(t, p=3, n_tables=3, b=1, h=4, d=128):
    return {"B": b, "H": h, "T": t, "D": d, "P": p, "L": n_tables}


TASK = register(Task(
    name="race_causal",
    description=(
        "Causal RACE attention (linear-time attention through soft LSH sketches), the paper's global "
        "normalization. Inputs q, k, v of shape (B, H, T, D) and hyperplanes w of shape (L, P, D), fp32. "
        "Soft hash of a vector x: for each table l, t = tanh(w[l] @ x) (P values), and for each of the "
        "R = 2^P corners r (bit p of r set means +1, else -1) the logit (1/sqrt(D)) * sum_p t[p] * sign_r[p]; "
        "phi_l(x) = softmax over the R logits; phi(x) concatenates the L tables (S = L*R entries, "
        "table-major). Output o[b,h,t] = sum_{j<=t} a_tj v[b,h,j] / sum_{j<=t} a_tj with "
        "a_tj = phi(q[b,h,t]) . phi(k[b,h,j]). Linear time: carry the prefix sums of phi(k_j) v_j^T "
        "(S x D) and of phi(k_j) (S) in fp32. Return o of shape (B, H, T, D) in q's dtype."
    ),
    signature="entry(q: Tensor[B, H, T, D], k: Tensor[B, H, T, D], v: Tensor[B, H, T, D], "
              "w: Tensor[L, P, D] fp32) -> Tensor[B, H, T, D]",
    reference=reference,
    make_inputs=make_inputs,
    shapes=[_shape(4096), _shape(65536), _shape(1 << 20), _shape(65536, 4, 4), _shape(1 << 20, 4, 4)],
    check_shapes=[_shape(1, 2, 2, h=1), _shape(1000, h=2), _shape(4097, 4, 4, h=1)],
    small_shapes=[_shape(37, 2, 2, h=2, d=16), _shape(70, 3, 3, h=1, d=32)],
    flops=flops,
    bytes=bytes_moved,
    seed="kernels.race.chunk_fwd",
    dtypes=(torch.bfloat16, torch.float32),
))
