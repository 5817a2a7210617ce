"""Hierarchical (chunk-based) sparse attention: references and evolution tasks.

Keys and values are split into chunks of S tokens; a chunk encoder gives one landmark
vector per complete chunk. Queries are grouped into tiles of the same S positions (tile c
holds positions c*S .. c*S+S-1); a tile and a KV head share one chunk choice, so a GQA
group's heads and a tile's queries load the same chunks (dense loads, as NSA does):

  tile score   t[c, i] = max over the tile's queries and the KV head's G query heads of q . lmk_i,
               for the chunks i < c (complete and wholly before the tile)
  selection    the top-N chunks by t[c, :] (ties to the lower chunk), ascending, -1 padded
  output       O_t = sum_{i in sel} w_{t,i} softmax(q_t K_i^T / sqrt(D)) V_i,
               w_t = softmax over the selected i of q_t . lmk_i / sqrt(D)   (no global softmax)

plus a causal sliding-window path (each query sees its last `window` positions, itself
included); the layer adds the two (the bypassing residual). Shapes:

  q   [B, Hq, Tq, D]   queries at positions T - Tq .. T - 1 (prefill: Tq = T; decode: Tq = 1)
  k,v [B, Hkv, T, D]   query head h reads KV head h // (Hq // Hkv)
  lmk [B, Hkv, T // S, D]   one landmark per complete chunk
  indices [B, Hkv, NT, N] int32, NT = (T - 1) // S - (T - Tq) // S + 1 tiles
"""
import math

import torch

from baselines.task import Task, dtype_size, generator, randn, register, upcast

TILE_BLOCK = 16  # tiles per step in the references: bounds their memory at long T


def tile_range(T, Tq, chunk_size):
    """(first tile's chunk number, number of tiles) covering query positions T - Tq .. T - 1."""
    c0 = (T - Tq) // chunk_size
    return c0, (T - 1) // chunk_size - c0 + 1


def _tiled_queries(q, T, chunk_size, Hkv):
    """q [B, Hq, Tq, D] -> ([B, Hkv, G, NT, S, D] zero padded, row-valid mask [NT, S], c0)."""
    B, Hq, Tq, D = q.shape
    S = chunk_size
    c0, NT = tile_range(T, Tq, S)
    pad = torch.zeros(B, Hq, NT * S, D, dtype=q.dtype, device=q.device)
    start = T - Tq - c0 * S
    pad[:, :, start:start + Tq] = q
    valid = torch.zeros(NT * S, dtype=torch.bool, device=q.device)
    valid[start:start + Tq] = True
    return pad.view(B, Hkv, Hq // Hkv, NT, S, D), valid.view(NT, S), c0


def _top_ascending(key, n):
    """Rows of `key` (-inf = ineligible): the n largest columns, ties to the lower one,
    ascending, -1 padded to n."""
    order = torch.sort(key, dim=-1, descending=True, stable=True).indices[..., :n]
    keep = key.gather(-1, order) > -math.inf
    big = key.shape[-1] + 1
    chosen = torch.sort(torch.where(keep, order, big), dim=-1).values
    chosen = torch.where(chosen == big, -1, chosen).to(torch.int32)
    if n > chosen.shape[-1]:
        chosen = torch.cat([chosen, chosen.new_full((*chosen.shape[:-1], n - chosen.shape[-1]), -1)], dim=-1)
    return chosen


def landmark_topn(q, lmk, seq_len, chunk_size, top_n):
    """Top-N chunks per (b, KV head, query tile) by the tile score; seq_len = T, the cache
    length (q holds its last Tq positions). -> [B, Hkv, NT, top_n] int32."""
    B, Hkv, NC, D = lmk.shape
    qt, row_valid, c0 = _tiled_queries(upcast(q), seq_len, chunk_size, Hkv)
    NT = qt.shape[3]
    out = []
    for t0 in range(0, NT, TILE_BLOCK):
        t1 = min(NT, t0 + TILE_BLOCK)
        s = torch.einsum("bhgtrd,bhcd->bhgtrc", qt[:, :, :, t0:t1], upcast(lmk))
        s = s.masked_fill(~row_valid[t0:t1, :, None], -math.inf).amax(dim=(2, 4))  # [B, Hkv, nt, NC]
        tiles = c0 + torch.arange(t0, t1, device=q.device)
        eligible = torch.arange(NC, device=q.device)[None, :] < tiles[:, None]
        out.append(_top_ascending(s.masked_fill(~eligible, -math.inf), top_n))
    return torch.cat(out, dim=2)


def chunk_sparse_attn(q, k, v, lmk, indices, chunk_size):
    """The sparse path for the given chunk choices. -> [B, Hq, Tq, D] in q's dtype."""
    B, Hq, Tq, D = q.shape
    Hkv, T = k.shape[1], k.shape[2]
    S, N = chunk_size, indices.shape[-1]
    qt, row_valid, c0 = _tiled_queries(upcast(q), T, S, Hkv)
    NT = qt.shape[3]
    NC = lmk.shape[2]
    kc = upcast(k)[:, :, :NC * S].reshape(B, Hkv, NC, S, D)
    vc = upcast(v)[:, :, :NC * S].reshape(B, Hkv, NC, S, D)
    scale = 1.0 / math.sqrt(D)
    outs = []
    for t0 in range(0, NT, TILE_BLOCK):
        t1 = min(NT, t0 + TILE_BLOCK)
        idx = indices[:, :, t0:t1].long()  # [B, Hkv, nt, N]
        have = idx >= 0
        flat = idx.clamp(min=0).flatten(2)  # [B, Hkv, nt*N]
        kg = kc.gather(2, flat[..., None, None].expand(-1, -1, -1, S, D)).view(B, Hkv, t1 - t0, N, S, D)
        vg = vc.gather(2, flat[..., None, None].expand(-1, -1, -1, S, D)).view(B, Hkv, t1 - t0, N, S, D)
        lg = upcast(lmk).gather(2, flat[..., None].expand(-1, -1, -1, D)).view(B, Hkv, t1 - t0, N, D)
        qb = qt[:, :, :, t0:t1]  # [B, Hkv, G, nt, S, D]
        p = torch.softmax(torch.einsum("bhgtrd,bhtnsd->bhgtrns", qb, kg) * scale, dim=-1)
        per_chunk = torch.einsum("bhgtrns,bhtnsd->bhgtrnd", p, vg)
        w = torch.einsum("bhgtrd,bhtnd->bhgtrn", qb, lg) * scale
        w = torch.softmax(w.masked_fill(~have[:, :, None, :, None, :], -math.inf), dim=-1)
        w = torch.nan_to_num(w, nan=0.0)  # a tile with no chunk before it: no sparse output
        outs.append(torch.einsum("bhgtrn,bhgtrnd->bhgtrd", w, per_chunk))
    o = torch.cat(outs, dim=3).reshape(B, Hq, NT * S, D)
    start = T - Tq - c0 * S
    return o[:, :, start:start + Tq].to(q.dtype)


def sliding_window_attn(q, k, v, window):
    """Causal attention to the last `window` positions (the query's own included)."""
    B, Hq, Tq, D = q.shape
    Hkv, T = k.shape[1], k.shape[2]
    G = Hq // Hkv
    kf = upcast(k).repeat_interleave(G, dim=1)
    vf = upcast(v).repeat_interleave(G, dim=1)
    outs = []
    step = 1024
    for i0 in range(0, Tq, step):
        i1 = min(Tq, i0 + step)
        pos = torch.arange(T - Tq + i0, T - Tq + i1, device=q.device)
        lo = max(0, int(pos[0]) - window + 1)
        keys = torch.arange(lo, int(pos[-1]) + 1, device=q.device)
        allowed = (keys[None, :] <= pos[:, None]) & (keys[None, :] > pos[:, None] - window)
        s = torch.einsum("bhid,bhjd->bhij", upcast(q[:, :, i0:i1]), kf[:, :, lo:int(pos[-1]) + 1]) / math.sqrt(D)
        p = torch.softmax(s.masked_fill(~allowed, -math.inf), dim=-1)
        outs.append(torch.einsum("bhij,bhjd->bhid", p, vf[:, :, lo:int(pos[-1]) + 1]))
    return torch.cat(outs, dim=2).to(q.dtype)


def hierarchical_attention(q, k, v, lmk, chunk_size, top_n, window):
    """Sliding window + chunk-sparse path (the bypassing residual adds them)."""
    idx = landmark_topn(q, lmk, k.shape[2], chunk_size, top_n)
    sparse = chunk_sparse_attn(q, k, v, lmk, idx, chunk_size)
    return (upcast(sliding_window_attn(q, k, v, window)) + upcast(sparse)).to(q.dtype)


# ---------------------------------------------------------------------------- tasks
def _qkv(shape, dtype, gen):
    B, Hq, Hkv, T, Tq, D = (shape[n] for n in ("B", "Hq", "Hkv", "T", "Tq", "D"))
    q = randn((B, Hq, Tq, D), dtype, gen)
    k = randn((B, Hkv, T, D), dtype, gen)
    v = randn((B, Hkv, T, D), dtype, gen)
    # Landmarks as a chunk encoder would give them: the chunk's mean key plus a learned part.
    S = shape["S"]
    NC = T // S
    mean = k[:, :, :NC * S].float().view(B, Hkv, NC, S, D).mean(3)
    lmk = (mean * math.sqrt(S) + randn((B, Hkv, NC, D), torch.float32, gen)).to(dtype)
    return q, k, v, lmk


def make_topn_inputs(shape, dtype, seed, device):
    q, k, v, lmk = _qkv(shape, dtype, generator(seed, device))
    return q, lmk, shape["T"], shape["S"], shape["N"]


def make_chunk_attn_inputs(shape, dtype, seed, device):
    q, k, v, lmk = _qkv(shape, dtype, generator(seed, device))
    return q, k, v, lmk, landmark_topn(q, lmk, shape["T"], shape["S"], shape["N"]), shape["S"]


def make_window_inputs(shape, dtype, seed, device):
    q, k, v, lmk = _qkv(shape, dtype, generator(seed, device))
    return q, k, v, shape["W"]


_LAYOUT = (
    "q: (B, Hq, Tq, D) holds the queries at positions T-Tq .. T-1 (prefill Tq = T, decode Tq = 1); "
    "k, v: (B, Hkv, T, D); query head h reads KV head h // G, G = Hq // Hkv. Chunks are S "
    "consecutive positions; lmk: (B, Hkv, T // S, D), one landmark per complete chunk. Query "
    "tile c = the queries at positions c*S .. c*S+S-1; tiles c0 = (T-Tq)//S .. (T-1)//S, "
    "numbered 0 .. NT-1 in the outputs. "
)
_NO_SDPA = ("torch.nn.functional.scaled_dot_product_attention", "torch.ops.aten.scaled_dot_product_attention")
# Llama-3-8B heads (32 q / 8 kv, d 128); chunk 64, top-8, window 512.
_PREFILL = {"B": 1, "Hq": 32, "Hkv": 8, "D": 128, "S": 64, "N": 8, "W": 512}
_SMALL = [{"B": 1, "Hq": 4, "Hkv": 2, "T": 77, "Tq": 77, "D": 16, "S": 16, "N": 2, "W": 24},
          {"B": 2, "Hq": 2, "Hkv": 1, "T": 50, "Tq": 1, "D": 16, "S": 16, "N": 4, "W": 20}]
_CHECK = [{"B": 2, "Hq": 8, "Hkv": 2, "T": 1000, "Tq": 1000, "D": 64, "S": 64, "N": 8, "W": 128},
          {"B": 1, "Hq": 12, "Hkv": 4, "T": 3000, "Tq": 3000, "D": 128, "S": 64, "N": 4, "W": 512},
          {"B": 3, "Hq": 8, "Hkv": 8, "T": 4097, "Tq": 1, "D": 128, "S": 64, "N": 8, "W": 512},
          {"B": 1, "Hq": 4, "Hkv": 1, "T": 300, "Tq": 300, "D": 64, "S": 64, "N": 16, "W": 64}]


def _n_tiles(s):
    return tile_range(s["T"], s["Tq"], s["S"])[1]


TOPN_TASK = register(Task(
    name="landmark_topn",
    description=(
        "Landmark scoring and top-N chunk selection for hierarchical sparse attention. " + _LAYOUT +
        "For every (b, KV head h, tile c): tile score t[i] = max over the tile's queries and over "
        "query heads h*G .. h*G+G-1 of q . lmk[b, h, i] (fp32), for chunks i < c only. Choose the "
        "min(N, c) chunks with the largest t (ties to the lower i) and return them as int32 "
        "(B, Hkv, NT, N): ascending, -1 in the unused slots. seq_len = T."
    ),
    signature="entry(q: Tensor[B, Hq, Tq, D], lmk: Tensor[B, Hkv, T//S, D], seq_len: int, chunk_size: int, top_n: int) -> int32[B, Hkv, NT, N]",
    reference=landmark_topn,
    make_inputs=make_topn_inputs,
    shapes=[dict(_PREFILL, T=32768, Tq=32768), dict(_PREFILL, T=131072, Tq=131072),
            dict(_PREFILL, B=8, T=131072, Tq=1)],
    check_shapes=_CHECK,
    small_shapes=_SMALL,
    flops=lambda s: s["B"] * s["Hq"] * s["Tq"] * s["D"] * float(s["T"] // s["S"]),  # 2 per MAC, half the chunks
    bytes=lambda s, dt: s["B"] * (s["Hq"] * s["Tq"] + s["Hkv"] * (s["T"] // s["S"])) * s["D"] * dtype_size(dt)
    + 4.0 * s["B"] * s["Hkv"] * _n_tiles(s) * s["N"],
    seed="kernels.chunk_sparse.landmark",
    forbidden=("torch.topk", "torch.Tensor.topk", "torch.sort", "torch.argsort", "torch.Tensor.sort"),
    dtypes=(torch.bfloat16, torch.float16),
))


CHUNK_ATTN_TASK = register(Task(
    name="chunk_sparse_attn",
    description=(
        "Chunk-sparse attention forward (hierarchical sparse attention) for given chunk choices. " + _LAYOUT +
        "indices (B, Hkv, NT, N) int32: the chunks tile c of KV head h reads (ascending, -1 = none). "
        "For a query at position t in tile c and query head g of KV head h, with the chosen "
        "chunks I: w = softmax over i in I of q . lmk[b, h, i] / sqrt(D); "
        "o = sum over i in I of w_i * softmax(q . K_i / sqrt(D)) V_i, where K_i, V_i are the S keys "
        "and values of chunk i (a softmax per chunk, not over all). No chunk: o = 0. fp32 math, "
        "o (B, Hq, Tq, D) in q's dtype. A tile's queries and a KV head's G query heads share "
        "the chunks: load each chunk once for all of them."
    ),
    signature=("entry(q: Tensor[B, Hq, Tq, D], k: Tensor[B, Hkv, T, D], v: Tensor[B, Hkv, T, D], "
               "lmk: Tensor[B, Hkv, T//S, D], indices: int32[B, Hkv, NT, N], chunk_size: int) -> Tensor[B, Hq, Tq, D]"),
    reference=chunk_sparse_attn,
    make_inputs=make_chunk_attn_inputs,
    shapes=[dict(_PREFILL, T=32768, Tq=32768), dict(_PREFILL, T=131072, Tq=131072),
            dict(_PREFILL, B=8, T=131072, Tq=1)],
    check_shapes=_CHECK,
    small_shapes=_SMALL,
    flops=lambda s: s["B"] * s["Hq"] * s["Tq"] * s["N"] * (4.0 * s["S"] + 2.0) * s["D"],
    bytes=lambda s, dt: (s["B"] * 2.0 * s["Hq"] * s["Tq"] * s["D"]
                         + s["B"] * s["Hkv"] * min(2 * s["T"], 2 * _n_tiles(s) * s["N"] * s["S"]) * s["D"]) * dtype_size(dt),
    seed="kernels.chunk_sparse.attn",
    forbidden=_NO_SDPA,
    dtypes=(torch.bfloat16, torch.float16),
))


WINDOW_TASK = register(Task(
    name="sliding_window_attn",
    description=(
        "Causal sliding-window GQA attention. " + _LAYOUT.split(" Chunks")[0] + " The query at "
        "position t attends to keys j with t - W < j <= t: o = softmax(q . k_j / sqrt(D)) v over "
        "them. fp32 math, o (B, Hq, Tq, D) in q's dtype."
    ),
    signature="entry(q: Tensor[B, Hq, Tq, D], k: Tensor[B, Hkv, T, D], v: Tensor[B, Hkv, T, D], window: int) -> Tensor[B, Hq, Tq, D]",
    reference=sliding_window_attn,
    make_inputs=make_window_inputs,
    shapes=[dict(_PREFILL, T=32768, Tq=32768), dict(_PREFILL, T=131072, Tq=131072)],
    check_shapes=_CHECK,
    small_shapes=_SMALL,
    flops=lambda s: 4.0 * s["B"] * s["Hq"] * s["Tq"] * min(s["W"], s["T"]) * s["D"],
    bytes=lambda s, dt: s["B"] * (2.0 * s["Hq"] * s["Tq"] + 2.0 * s["Hkv"] * s["T"]) * s["D"] * dtype_size(dt),
    seed="kernels.chunk_sparse.window",
    forbidden=_NO_SDPA,
    dtypes=(torch.bfloat16, torch.float16),
))
