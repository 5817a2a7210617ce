"""MLSTM: an mLSTM layer (xLSTM's matrix memory) on the kernels in kernels/mlstm."""
import torch
import torch.nn.functional as F
from torch import nn

from kernels.mlstm import mlstm_chunkwise, mlstm_step


class MLSTM(nn.Module):
    """x (B, T, dim) -> (B, T, dim). Per head: q, k (qk_dim), v (v_dim) and scalar input/forget
    gates from x; the mLSTM cell; a per-head RMS norm; a sigmoid output gate; the output
    projection (the xLSTM-7B block's mixing layer, without its convolutions).
    `forward` runs whole sequences from an empty memory (training, prefill; with
    return_state=True it also returns the memory (C, n, m)); `step` runs one token
    (B, dim) against a carried memory (decode)."""

    def __init__(self, dim: int, n_heads: int, qk_dim: int | None = None, v_dim: int | None = None,
                 chunk: int | None = None, eps: float = 1e-6):
        super().__init__()
        v_dim = v_dim or dim // n_heads
        qk_dim = qk_dim or v_dim // 2
        for name, n in (("qk_dim", qk_dim), ("v_dim", v_dim)):
            if n < 16 or n & (n - 1):
                raise ValueError(f"{name}={n} must be a power of two >= 16 (the kernels' tiles)")
        self.n_heads, self.qk_dim, self.v_dim, self.chunk, self.eps = n_heads, qk_dim, v_dim, chunk, eps
        self.q = nn.Linear(dim, n_heads * qk_dim, bias=False)
        self.k = nn.Linear(dim, n_heads * qk_dim, bias=False)
        self.v = nn.Linear(dim, n_heads * v_dim, bias=False)
        self.gates = nn.Linear(dim, 2 * n_heads)  # input, forget pre-activations
        self.out_gate = nn.Linear(dim, n_heads * v_dim, bias=False)
        self.norm_weight = nn.Parameter(torch.ones(n_heads, v_dim))
        self.out = nn.Linear(n_heads * v_dim, dim, bias=False)
        with torch.no_grad():  # xLSTM: forget gates start open (sigmoid 0.95..0.998), input gates small
            self.gates.bias[:n_heads].fill_(0.0)
            self.gates.bias[n_heads:].copy_(torch.linspace(3.0, 6.0, n_heads))

    def project(self, x):
        """(..., dim) -> q, k (..., H, qk_dim), v (..., H, v_dim), i, f (..., H)."""
        lead = x.shape[:-1]
        i, f = self.gates(x).view(*lead, 2, self.n_heads).unbind(-2)
        return (self.q(x).view(*lead, self.n_heads, self.qk_dim), self.k(x).view(*lead, self.n_heads, self.qk_dim),
                self.v(x).view(*lead, self.n_heads, self.v_dim), i, f)

    def finish(self, h, x):
        """h (..., H, v_dim) and the layer input x (..., dim) -> (..., dim)."""
        h = F.rms_norm(h, (self.v_dim,), eps=self.eps) * self.norm_weight
        h = h * torch.sigmoid(self.out_gate(x)).view_as(h)
        return self.out(h.flatten(-2))

    def forward(self, x, return_state: bool = False):
        q, k, v, i, f = (t.transpose(1, 2) for t in self.project(x))  # (B, H, T, ...)
        result = mlstm_chunkwise(q, k, v, i, f, chunk=self.chunk, return_state=return_state)
        h, state = result if return_state else (result, None)
        y = self.finish(h.transpose(1, 2), x)
        return (y, state) if return_state else y

    def init_state(self, batch: int, device=None):
        """An empty memory: C (B, H, qk_dim, v_dim), n (B, H, qk_dim), m (B, H), fp32."""
        h, dqk, dv = self.n_heads, self.qk_dim, self.v_dim
        return (torch.zeros(batch, h, dqk, dv, device=device), torch.zeros(batch, h, dqk, device=device),
                torch.zeros(batch, h, device=device))

    def step(self, x, state=None):
        """One token x (B, dim) -> (y (B, dim), new state)."""
        state = self.init_state(x.shape[0], x.device) if state is None else state
        q, k, v, i, f = self.project(x)
        h, c, n, m = mlstm_step(q, k, v, i, f, *state)
        return self.finish(h, x), (c, n, m)
