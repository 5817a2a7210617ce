"""RACEAttention: a drop-in attention block whose token mixing is RACE (kernels/race)."""
import torch
from torch import nn

from kernels.race import race_attention


class RACEAttention(nn.Module):
    """x (B, T, dim) -> (B, T, dim): q/k/v projections, RACE attention per head (global
    normalization, soft hashing with `n_tables` tables of `p` hyperplanes each), averaged over
    `ensembles` independent sketches, then the output projection. The hyperplanes are fixed
    random Gaussians (a buffer: saved with the model, never trained)."""

    def __init__(self, dim: int, n_heads: int, p: int = 3, n_tables: int = 3, ensembles: int = 1,
                 causal: bool = True, beta: float | None = None, bias: bool = False, chunk: int | None = None):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"dim={dim} is not a multiple of n_heads={n_heads}")
        head_dim = dim // n_heads
        if head_dim < 16 or head_dim & (head_dim - 1):
            raise ValueError(f"head size {head_dim} must be a power of two >= 16 (the kernels' tiles)")
        if ensembles < 1 or n_tables < 1 or not 1 <= p <= 8:
            raise ValueError(f"need ensembles >= 1, n_tables >= 1, 1 <= p <= 8; got {ensembles}, {n_tables}, {p}")
        self.n_heads, self.head_dim, self.causal, self.beta, self.chunk = n_heads, head_dim, causal, beta, chunk
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)
        self.register_buffer("hyperplanes", torch.randn(ensembles, n_tables, p, head_dim))

    def project(self, x):
        """(B, T, dim) -> q, k, v (B, H, T, head_dim)."""
        b, t, _ = x.shape
        return self.qkv(x).view(b, t, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)

    def merge(self, o):
        """(B, H, T, head_dim) -> (B, T, dim) through the output projection."""
        b, h, t, d = o.shape
        return self.proj(o.transpose(1, 2).reshape(b, t, h * d))

    def forward(self, x):
        q, k, v = self.project(x)
        outs = [race_attention(q, k, v, w, self.beta, self.causal, self.chunk) for w in self.hyperplanes]
        return self.merge(torch.stack(outs).mean(0) if len(outs) > 1 else outs[0])
