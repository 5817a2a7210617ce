"""Hybrid-head sparse decoding (LycheeDecode) kernels, as torch.library ops in namespace `evo`.

- `hybrid_decode`: retrieval + sparse heads over a paged KV cache in one split-KV launch,
  returning the output and the retrieval heads' block scores (decode.py);
- `dense_decode`: the same kernel with every head a retrieval head (the dense baseline);
- `block_topk`: sink + local + top-k block selection from those scores (topk.py).
References: baselines/hybrid_decode.py. The layer: kernels.nn.HybridHeadSparseDecode.
"""
import torch

from kernels.hybrid_decode import decode as _decode
from kernels.hybrid_decode import topk as _topk


@torch.library.custom_op("evo::hybrid_decode", mutates_args=())
def hybrid_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: torch.Tensor,
                  seq_lens: torch.Tensor, is_retrieval: torch.Tensor, indices: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    return _decode.hybrid_decode(q, k_cache, v_cache, block_table, seq_lens, is_retrieval, indices)


@hybrid_decode.register_fake
def _(q, k_cache, v_cache, block_table, seq_lens, is_retrieval, indices):
    B, Hkv = q.shape[0], k_cache.shape[1]
    return torch.empty_like(q), q.new_empty((B, Hkv, block_table.shape[1]), dtype=torch.float32)


@torch.library.custom_op("evo::dense_decode", mutates_args=())
def dense_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: torch.Tensor,
                 seq_lens: torch.Tensor) -> torch.Tensor:
    return _decode.dense_decode(q, k_cache, v_cache, block_table, seq_lens)


@dense_decode.register_fake
def _(q, k_cache, v_cache, block_table, seq_lens):
    return torch.empty_like(q)


@torch.library.custom_op("evo::block_topk", mutates_args=())
def block_topk(scores: torch.Tensor, n_blocks: torch.Tensor, k: int, n_sink: int, n_local: int) -> torch.Tensor:
    return _topk.block_topk(scores, n_blocks, k, n_sink, n_local)


@block_topk.register_fake
def _(scores, n_blocks, k, n_sink, n_local):
    return scores.new_empty((scores.shape[0], scores.shape[1], k), dtype=torch.int32)


__all__ = ["hybrid_decode", "dense_decode", "block_topk"]
