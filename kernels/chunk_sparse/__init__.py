"""Hierarchical (chunk-based) sparse attention kernels, as torch.library ops in namespace `evo`.

- `landmark_topn`: tile scores against the chunk landmarks + top-N chunks per (KV head, query tile);
- `chunk_sparse_attn`: per-chunk softmax attention over the chosen chunks, mixed by the
  softmax of their landmark scores (prefill and decode: q holds the last Tq positions);
- `sliding_window_attn`: the causal sliding-window path;
- `hierarchical_attention`: window + sparse path, what the layer runs.
References: baselines/chunk_sparse.py. The layer: kernels.nn.HierarchicalSparseAttention.
"""
import torch

from kernels.chunk_sparse import attn as _attn
from kernels.chunk_sparse import landmark as _landmark
from kernels.chunk_sparse import window as _window


@torch.library.custom_op("evo::landmark_topn", mutates_args=())
def landmark_topn(q: torch.Tensor, lmk: torch.Tensor, seq_len: int, chunk_size: int, top_n: int) -> torch.Tensor:
    return _landmark.landmark_topn(q, lmk, seq_len, chunk_size, top_n)


@landmark_topn.register_fake
def _(q, lmk, seq_len, chunk_size, top_n):
    n_tiles = (seq_len - 1) // chunk_size - (seq_len - q.shape[2]) // chunk_size + 1
    return q.new_empty((q.shape[0], lmk.shape[1], n_tiles, top_n), dtype=torch.int32)


@torch.library.custom_op("evo::chunk_sparse_attn", mutates_args=())
def chunk_sparse_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lmk: torch.Tensor, indices: torch.Tensor,
                      chunk_size: int) -> torch.Tensor:
    return _attn.chunk_sparse_attn(q, k, v, lmk, indices, chunk_size)


@chunk_sparse_attn.register_fake
def _(q, k, v, lmk, indices, chunk_size):
    return torch.empty_like(q)


@torch.library.custom_op("evo::sliding_window_attn", mutates_args=())
def sliding_window_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> torch.Tensor:
    return _window.sliding_window_attn(q, k, v, window)


@sliding_window_attn.register_fake
def _(q, k, v, window):
    return torch.empty_like(q)


def hierarchical_attention(q, k, v, lmk, chunk_size, top_n, window):
    """Sliding window + chunk-sparse path over the top-N chunks by landmark score."""
    indices = landmark_topn(q, lmk, k.shape[2], chunk_size, top_n)
    return sliding_window_attn(q, k, v, window) + chunk_sparse_attn(q, k, v, lmk, indices, chunk_size)


__all__ = ["landmark_topn", "chunk_sparse_attn", "sliding_window_attn", "hierarchical_attention"]
