"""Adapters for the library implementations a task is timed against besides eager and
torch.compile (the harness times those two itself). Each takes the task's inputs as they are."""
import torch
import torch.nn.functional as F


def sdpa_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """decode_attention through torch's fused attention (flash / memory-efficient kernels)."""
    out = F.scaled_dot_product_attention(q.unsqueeze(2), k, v, enable_gqa=True)
    return out.squeeze(2)
