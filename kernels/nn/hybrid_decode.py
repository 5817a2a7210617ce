"""LycheeDecode's hybrid-head sparse attention at decode time (methods.md section 2).

The attention core only: q and the paged KV cache come from the model's projections.
Each KV head of each layer is a retrieval head or a sparse head (the roles learned in
training, fixed at inference). Layer 0 is dense; a retrieval head attends to the whole
cache and picks its k-token budget of blocks (sink + local + top scores); the same head
in the next layer, if sparse, attends only to those blocks and passes them on.
"""
import torch
from torch import nn

from kernels.hybrid_decode import block_topk, hybrid_decode


class HybridHeadSparseDecode(nn.Module):
    """retrieval_heads: bool [num_layers, Hkv]; budget: tokens a sparse head reads (rounded up
    to whole pages); page_size: the cache's page (= selection block) size; n_sink / n_local:
    blocks always kept at the start / end; correction_every: every N-th decode step runs all
    heads of all layers dense and re-selects (None: never).

    Usage, per decode step:  indices = None
                             for layer: o, indices = mod(layer, q, k_cache, v_cache, block_table,
                                                         seq_lens, indices, step)
    Layout: baselines/hybrid_decode.py (k_cache [pages, Hkv, P, D], block_table [B, NB])."""

    def __init__(self, retrieval_heads: torch.Tensor, budget: int, page_size: int = 64, n_sink: int = 1,
                 n_local: int = 2, correction_every: int | None = None):
        super().__init__()
        if retrieval_heads.dim() != 2:
            raise ValueError("retrieval_heads must be a bool tensor [num_layers, num_kv_heads]")
        if budget < 1 or page_size < 16 or page_size & (page_size - 1):
            raise ValueError(f"budget must be >= 1 and page_size a power of two >= 16 (got {budget}, {page_size})")
        if correction_every is not None and correction_every < 1:
            raise ValueError(f"correction_every must be >= 1 or None, got {correction_every}")
        self.register_buffer("roles", retrieval_heads.to(torch.int32), persistent=False)
        self.page_size = page_size
        self.k_blocks = -(-budget // page_size)
        self.n_sink, self.n_local = n_sink, n_local
        self.correction_every = correction_every

    def is_dense(self, layer: int, step: int) -> bool:
        return layer == 0 or (self.correction_every is not None and step % self.correction_every == 0)

    def forward(self, layer: int, q, k_cache, v_cache, block_table, seq_lens, indices=None, step: int = 1):
        """-> (o [B, Hq, D], indices [B, Hkv, k_blocks] for the next layer)."""
        if k_cache.shape[2] != self.page_size:
            raise ValueError(f"cache pages hold {k_cache.shape[2]} tokens, the layer was built for {self.page_size}")
        B, Hkv = q.shape[0], k_cache.shape[1]
        dense = self.is_dense(layer, step) or indices is None
        roles = torch.ones_like(self.roles[layer]) if dense else self.roles[layer]
        if indices is None:
            indices = torch.full((B, Hkv, self.k_blocks), -1, dtype=torch.int32, device=q.device)
        o, scores = hybrid_decode(q, k_cache, v_cache, block_table, seq_lens, roles, indices)
        n_blocks = (seq_lens + self.page_size - 1) // self.page_size
        fresh = block_topk(scores, n_blocks.to(torch.int32), self.k_blocks, self.n_sink, self.n_local)
        return o, torch.where(roles.bool()[None, :, None], fresh, indices)
