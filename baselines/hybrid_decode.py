"""Hybrid-head sparse decoding (LycheeDecode): the references and two evolution tasks.

At decode time every KV head is either a *retrieval* head (attends to the whole cache,
then picks the k most-attended blocks) or a *sparse* head (attends only to the block set
the same head picked one layer earlier). Layer 0 is dense. Shapes and layout:

  q            [B, Hq, D]               one new token per sequence (already in the cache)
  k_cache      [num_pages, Hkv, P, D]   a paged cache, P tokens of one KV head per page
  v_cache      [num_pages, Hkv, P, D]   (FlashInfer's "HND" page layout)
  block_table  [B, max_blocks] int32    logical block j of sequence b is page block_table[b, j];
                                        entries past a sequence's last block are ignored (-1 ok)
  seq_lens     [B] int32                cached tokens per sequence, 1 <= seq_len <= max_blocks * P
  is_retrieval [Hkv] int32              1: retrieval head, 0: sparse head
  indices      [B, Hkv, k_blocks] int32 a sparse head's block set: ascending, -1 padded at the end

Selection works at page granularity: a block is one page of P tokens. Query head h reads
KV head h // G (G = Hq // Hkv); a block set is per KV head, shared by its G query heads.
"""
import math

import torch

from baselines.task import Task, dtype_size, generator, randn, register, upcast


# ---------------------------------------------------------------------------- references
def gather_pages(cache: torch.Tensor, block_table: torch.Tensor) -> torch.Tensor:
    """[num_pages, Hkv, P, D] paged by block_table [B, NB] -> contiguous [B, Hkv, NB * P, D]."""
    pages = cache[block_table.long().clamp(min=0)]  # [B, NB, Hkv, P, D]
    return pages.permute(0, 2, 1, 3, 4).flatten(2, 3)


def num_blocks(seq_lens: torch.Tensor, page_size: int) -> torch.Tensor:
    return (seq_lens + page_size - 1) // page_size


def hybrid_attention(q, k_cache, v_cache, block_table, seq_lens, is_retrieval, indices):
    """One layer's attention. Returns (o [B, Hq, D] in q's dtype, scores [B, Hkv, max_blocks]):
    scores[b, h, j] = attention mass of block j summed over KV head h's G query heads, for
    retrieval heads (blocks past the sequence score 0); all zeros for sparse heads."""
    B, Hq, D = q.shape
    Hkv, P = k_cache.shape[1], k_cache.shape[2]
    NB = block_table.shape[1]
    G = Hq // Hkv
    k = upcast(gather_pages(k_cache, block_table))
    v = upcast(gather_pages(v_cache, block_table))
    pos = torch.arange(NB * P, device=q.device)
    in_seq = pos[None, :] < seq_lens[:, None].long()  # [B, N]
    # Sparse heads see only their blocks; index -1 lands in a dummy column that is dropped.
    chosen = torch.zeros(B, Hkv, NB + 1, dtype=torch.bool, device=q.device)
    chosen.scatter_(2, torch.where(indices < 0, NB, indices).long(), True)
    token_chosen = chosen[:, :, :NB].repeat_interleave(P, dim=2)  # [B, Hkv, N]
    retrieval = is_retrieval.bool()[None, :, None]
    allowed = in_seq[:, None, :] & (retrieval | token_chosen)  # [B, Hkv, N]
    v = v.masked_fill(~allowed[..., None], 0.0)  # unused cache slots may hold anything, NaN too
    qf = upcast(q).view(B, Hkv, G, D)
    s = torch.einsum("bhgd,bhnd->bhgn", qf, k.masked_fill(~allowed[..., None], 0.0)) / math.sqrt(D)
    p = torch.softmax(s.masked_fill(~allowed[:, :, None, :], -math.inf), dim=-1)
    o = torch.einsum("bhgn,bhnd->bhgd", p, v).reshape(B, Hq, D)
    mass = p.sum(2).view(B, Hkv, NB, P).sum(-1)
    scores = torch.where(retrieval, mass, 0.0).to(torch.float32)
    return o.to(q.dtype), scores


def dense_decode(q, k_cache, v_cache, block_table, seq_lens):
    """GQA decode attention over the whole paged cache (every head a retrieval head)."""
    Hkv = k_cache.shape[1]
    roles = torch.ones(Hkv, dtype=torch.int32, device=q.device)
    no_blocks = torch.full((q.shape[0], Hkv, 1), -1, dtype=torch.int32, device=q.device)
    return hybrid_attention(q, k_cache, v_cache, block_table, seq_lens, roles, no_blocks)[0]


def sparse_decode(q, k_cache, v_cache, block_table, seq_lens, indices):
    """GQA decode attention over each KV head's inherited block set only."""
    roles = torch.zeros(k_cache.shape[1], dtype=torch.int32, device=q.device)
    return hybrid_attention(q, k_cache, v_cache, block_table, seq_lens, roles, indices)[0]


def block_topk(scores, n_blocks, k, n_sink, n_local):
    """Per (b, h): the sink blocks j < n_sink, the local blocks j >= n_blocks[b] - n_local and
    the highest-scoring other blocks, k in all (fewer when the sequence has fewer blocks);
    ties go to the lower block. Returns [B, Hkv, k] int32, ascending, -1 padded.
    scores are attention masses: non-negative; entries j >= n_blocks[b] are ignored."""
    B, H, NB = scores.shape
    j = torch.arange(NB, device=scores.device)
    nb = n_blocks.long()[:, None, None]
    valid = j < nb
    if torch.isnan(scores).any() or (scores.masked_fill(~valid, 0) < 0).any():
        raise ValueError("block_topk: scores must be non-negative and not NaN")
    forced = valid & ((j < n_sink) | (j >= nb - n_local))
    key = torch.where(forced, math.inf, upcast(scores))
    key = torch.where(valid, key, -1.0)
    order = torch.sort(key, dim=-1, descending=True, stable=True).indices[..., :k]
    keep = key.gather(-1, order) >= 0
    big = NB + 1
    chosen = torch.sort(torch.where(keep, order, big), dim=-1).values
    chosen = torch.where(chosen == big, -1, chosen).to(torch.int32)
    if k > NB:
        chosen = torch.cat([chosen, chosen.new_full((B, H, k - NB), -1)], dim=-1)
    return chosen


def hybrid_layer_step(q, k_cache, v_cache, block_table, seq_lens, is_retrieval, indices,
                      k_blocks, n_sink, n_local):
    """One layer: attention, then retrieval heads pick fresh block sets and sparse heads pass
    theirs on. Returns (o, indices for the next layer)."""
    o, scores = hybrid_attention(q, k_cache, v_cache, block_table, seq_lens, is_retrieval, indices)
    P = k_cache.shape[2]
    fresh = block_topk(scores, num_blocks(seq_lens, P), k_blocks, n_sink, n_local)
    return o, torch.where(is_retrieval.bool()[None, :, None], fresh, indices)


def hybrid_decode_layers(qs, k_caches, v_caches, block_table, seq_lens, roles, k_blocks,
                         n_sink, n_local, dense=False):
    """A decode step through all layers: layer 0 (and every layer when `dense`, the
    correction step) is all-retrieval; roles is [num_layers, Hkv]. Returns the outputs."""
    outs, indices = [], None
    for layer, (q, kc, vc) in enumerate(zip(qs, k_caches, v_caches)):
        role = torch.ones_like(roles[layer]) if layer == 0 or dense else roles[layer]
        if indices is None:
            indices = torch.full((q.shape[0], kc.shape[1], k_blocks), -1, dtype=torch.int32, device=q.device)
        o, indices = hybrid_layer_step(q, kc, vc, block_table, seq_lens, role, indices, k_blocks, n_sink, n_local)
        outs.append(o)
    return outs


# ---------------------------------------------------------------------------- inputs
N_SINK, N_LOCAL = 1, 2  # blocks: the first page, and the two most recent pages


def make_paged_cache(B, Hkv, L, D, P, dtype, gen, ragged):
    """A paged cache with pages scattered over the pool; unused slots of the last pages hold NaN."""
    dev = gen.device
    NB = -(-L // P)
    seq_lens = torch.full((B,), L, dtype=torch.int32, device=dev)
    if ragged and B > 1:
        seq_lens[1:] -= torch.randint(0, max(1, L // 3), (B - 1,), generator=gen, device=dev).int()
    pool = B * NB + 3
    k_cache = randn((pool, Hkv, P, D), dtype, gen)
    v_cache = randn((pool, Hkv, P, D), dtype, gen)
    block_table = torch.randperm(pool, generator=gen, device=dev)[: B * NB].view(B, NB).int()
    for b in range(B):  # NaN in every slot past the sequence: a kernel must never read it
        n = int(seq_lens[b])
        last = block_table[b, (n - 1) // P]
        k_cache[last, :, (n - 1) % P + 1:] = float("nan")
        v_cache[last, :, (n - 1) % P + 1:] = float("nan")
        block_table[b, (n - 1) // P + 1:] = -1
    return k_cache, v_cache, block_table, seq_lens


def make_hybrid_inputs(shape, dtype, seed, device):
    gen = generator(seed, device)
    B, Hq, Hkv, D, L, P = (shape[n] for n in ("B", "Hq", "Hkv", "D", "L", "P"))
    q = randn((B, Hq, D), dtype, gen, scale=3.0)  # peaked attention, as trained heads have
    k_cache, v_cache, block_table, seq_lens = make_paged_cache(B, Hkv, L, D, P, dtype, gen, shape.get("ragged", 0))
    is_retrieval = torch.zeros(Hkv, dtype=torch.int32, device=device)
    is_retrieval[torch.randperm(Hkv, generator=gen, device=device)[: shape["R"]]] = 1
    # A sparse head's inherited set: what block_topk picks from some earlier head's scores.
    earlier = torch.rand((B, Hkv, block_table.shape[1]), generator=gen, device=device)
    indices = block_topk(earlier, num_blocks(seq_lens, P), shape["K"] // P, N_SINK, N_LOCAL)
    return q, k_cache, v_cache, block_table, seq_lens, is_retrieval, indices


def make_topk_inputs(shape, dtype, seed, device):
    gen = generator(seed, device)
    B, Hkv, NB = shape["B"], shape["Hkv"], shape["NB"]
    scores = torch.rand((B, Hkv, NB), generator=gen, device=device) ** 4  # masses: a few large
    n_blocks = torch.full((B,), NB, dtype=torch.int32, device=device)
    if shape.get("ragged", 0) and B > 1:
        n_blocks[1:] -= torch.randint(0, max(1, NB // 2), (B - 1,), generator=gen, device=device).int()
    j = torch.arange(NB, device=device)
    scores = torch.where(j < n_blocks[:, None, None].long(), scores, 1e9)  # past the end: a trap, never chosen
    return scores.to(dtype), n_blocks, shape["K"], N_SINK, N_LOCAL


def _tokens_read(s):
    """Cache positions one decode step must read per sequence, over all KV heads."""
    return s["R"] * s["L"] + (s["Hkv"] - s["R"]) * min(s["K"], s["L"])


HYBRID_TASK = register(Task(
    name="hybrid_decode",
    description=(
        "One decode step of hybrid-head sparse attention (LycheeDecode) over a paged KV cache. "
        "q: (B, Hq, D); k_cache, v_cache: (num_pages, Hkv, P, D), page block_table[b, j] holds "
        "tokens j*P .. j*P+P-1 of sequence b for every KV head; seq_lens[b] tokens are valid "
        "(slots past them hold garbage, NaN included; table entries past the last block are -1). "
        "Query head h reads KV head h // G, G = Hq // Hkv. KV head h is a retrieval head if "
        "is_retrieval[h] == 1: its query heads attend to all seq_lens[b] tokens; otherwise a "
        "sparse head: its query heads attend only to tokens of the blocks listed in "
        "indices[b, h, :] (ascending, -1 = no block). p = softmax(q . k / sqrt(D)) over the "
        "allowed tokens, o = sum p * v (fp32 math, o in q's dtype). Also return "
        "scores (B, Hkv, max_blocks) fp32: for a retrieval head, scores[b, h, j] = the sum of p "
        "over block j's tokens and over the head's G query heads (0 past the sequence); 0 for "
        "sparse heads. Memory-bound: read each needed KV page once for all G query heads and "
        "split the work of long heads over many programs (split-KV + a reduction)."
    ),
    signature=("entry(q: Tensor[B, Hq, D], k_cache: Tensor[pages, Hkv, P, D], v_cache: Tensor[pages, Hkv, P, D], "
               "block_table: int32[B, NB], seq_lens: int32[B], is_retrieval: int32[Hkv], "
               "indices: int32[B, Hkv, K/P]) -> (Tensor[B, Hq, D], float32[B, Hkv, NB])"),
    reference=hybrid_attention,
    make_inputs=make_hybrid_inputs,
    # Llama-3-8B heads (32 q / 8 kv, d 128), pages of 64, 1 of 8 KV heads retrieval.
    shapes=[{"B": 8, "Hq": 32, "Hkv": 8, "D": 128, "L": 131072, "P": 64, "K": 4096, "R": 1},
            {"B": 1, "Hq": 32, "Hkv": 8, "D": 128, "L": 131072, "P": 64, "K": 2048, "R": 1},
            {"B": 8, "Hq": 32, "Hkv": 8, "D": 128, "L": 32768, "P": 64, "K": 1024, "R": 1}],
    check_shapes=[{"B": 3, "Hq": 8, "Hkv": 2, "D": 128, "L": 1000, "P": 64, "K": 256, "R": 1, "ragged": 1},
                  {"B": 2, "Hq": 12, "Hkv": 4, "D": 64, "L": 4097, "P": 64, "K": 512, "R": 2, "ragged": 1},
                  {"B": 2, "Hq": 8, "Hkv": 8, "D": 128, "L": 300, "P": 64, "K": 1024, "R": 0, "ragged": 1}],
    small_shapes=[{"B": 2, "Hq": 4, "Hkv": 2, "D": 16, "L": 70, "P": 16, "K": 48, "R": 1, "ragged": 1}],
    flops=lambda s: s["B"] * (s["Hq"] // s["Hkv"]) * _tokens_read(s) * 4.0 * s["D"],
    bytes=lambda s, dt: s["B"] * (2.0 * _tokens_read(s) * s["D"] + 2.0 * s["Hq"] * s["D"]) * dtype_size(dt)
    + 4.0 * s["B"] * s["Hkv"] * -(-s["L"] // s["P"]),
    seed="kernels.hybrid_decode.decode",
    forbidden=("torch.nn.functional.scaled_dot_product_attention", "torch.ops.aten.scaled_dot_product_attention"),
    dtypes=(torch.bfloat16, torch.float16),
))


TOPK_TASK = register(Task(
    name="block_topk",
    description=(
        "Block top-k selection for sparse decoding. scores: (B, H, NB) float32 attention "
        "masses (>= 0); n_blocks: int32 (B,): only blocks j < n_blocks[b] exist (ignore the "
        "rest, whatever they hold). For every (b, h) choose min(k, n_blocks[b]) blocks: first "
        "the forced ones (j < n_sink or j >= n_blocks[b] - n_local), then the highest "
        "scores, ties to the lower j. Return int32 (B, H, k): the chosen block numbers in "
        "ascending order, then -1 for the unused slots."
    ),
    signature="entry(scores: float32[B, H, NB], n_blocks: int32[B], k: int, n_sink: int, n_local: int) -> int32[B, H, k]",
    reference=block_topk,
    make_inputs=make_topk_inputs,
    # 128K and 512K contexts in pages of 64, 8 KV heads; k = 4096 tokens.
    shapes=[{"B": 8, "Hkv": 8, "NB": 2048, "K": 64}, {"B": 1, "Hkv": 8, "NB": 8192, "K": 64},
            {"B": 64, "Hkv": 8, "NB": 512, "K": 16}],
    check_shapes=[{"B": 3, "Hkv": 2, "NB": 1000, "K": 37, "ragged": 1}, {"B": 2, "Hkv": 3, "NB": 20, "K": 33, "ragged": 1},
                  {"B": 1, "Hkv": 1, "NB": 1, "K": 4}],
    small_shapes=[{"B": 2, "Hkv": 2, "NB": 50, "K": 7, "ragged": 1}, {"B": 2, "Hkv": 1, "NB": 5, "K": 9, "ragged": 1}],
    flops=lambda s: 32.0 * s["B"] * s["Hkv"] * s["NB"],
    bytes=lambda s, dt: s["B"] * s["Hkv"] * (4.0 * s["NB"] + 4.0 * s["K"]),
    seed="kernels.hybrid_decode.topk",
    forbidden=("torch.topk", "torch.Tensor.topk", "torch.sort", "torch.argsort", "torch.Tensor.sort"),
    dtypes=(torch.float32,),
))
