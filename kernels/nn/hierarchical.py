"""Hierarchical (chunk-based) sparse attention (methods.md section 3).

Keys are split into chunks; a chunk encoder turns each complete chunk into a landmark;
each query tile picks its top-N chunks per KV head by landmark score and attends to them
(a softmax per chunk, mixed by the softmax of the landmark scores), added through a
bypassing residual to causal sliding-window attention. Lower layers use the window alone
(sparse=False). The attention kernels are forward-only: this is an inference layer.
"""
import torch
import torch.nn.functional as F
from torch import nn

from kernels.chunk_sparse import chunk_sparse_attn, landmark_topn, sliding_window_attn


class ChunkEncoder(nn.Module):
    """Landmark of a chunk = its mean key + a small MLP of it (the MLP's output layer starts
    at zero, so an untrained encoder gives the mean key)."""

    def __init__(self, head_dim: int, hidden: int | None = None):
        super().__init__()
        self.up = nn.Linear(head_dim, hidden or 2 * head_dim)
        self.down = nn.Linear(hidden or 2 * head_dim, head_dim)
        nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.down.bias)

    def forward(self, k: torch.Tensor, chunk_size: int) -> torch.Tensor:
        """k [B, Hkv, T, D] -> landmarks [B, Hkv, T // chunk_size, D] in k's dtype."""
        B, H, T, D = k.shape
        n = T // chunk_size
        mean = k[:, :, :n * chunk_size].float().view(B, H, n, chunk_size, D).mean(3)
        x = mean.to(self.up.weight.dtype)
        return (x + self.down(F.gelu(self.up(x)))).to(k.dtype)


class HierarchicalSparseAttention(nn.Module):
    """q [B, Hq, Tq, D] (the last Tq positions: prefill Tq = T, decode Tq = 1),
    k, v [B, Hkv, T, D] -> [B, Hq, Tq, D]. chunk_size: tokens per chunk (a power of two
    >= 16); top_n: chunks per query tile; window: sliding-window length; sparse: add the
    chunk-sparse path (upper layers) or not (lower layers)."""

    def __init__(self, head_dim: int, chunk_size: int = 64, top_n: int = 8, window: int = 512, sparse: bool = True):
        super().__init__()
        if chunk_size < 16 or chunk_size & (chunk_size - 1) or top_n < 1 or window < 1:
            raise ValueError(f"chunk_size must be a power of two >= 16, top_n and window >= 1 "
                             f"(got {chunk_size}, {top_n}, {window})")
        self.chunk_size, self.top_n, self.window, self.sparse = chunk_size, top_n, window, sparse
        self.encoder = ChunkEncoder(head_dim)

    def forward(self, q, k, v, landmarks=None):
        """landmarks: [B, Hkv, T // chunk_size, D], e.g. cached across decode steps; computed
        from k by the encoder when None."""
        out = sliding_window_attn(q, k, v, self.window)
        if not self.sparse:
            return out
        lmk = self.encoder(k, self.chunk_size) if landmarks is None else landmarks
        indices = landmark_topn(q, lmk, k.shape[2], self.chunk_size, self.top_n)
        return out + chunk_sparse_attn(q, k, v, lmk, indices, self.chunk_size)
