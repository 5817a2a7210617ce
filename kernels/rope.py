"""Seed: one program per (token, block of heads); each loads the token's cos/sin row once and
rotates the two halves of BLOCK_H head vectors. fp32 math."""
import torch
import triton
import triton.language as tl


@triton.jit
def _rope_kernel(x_ptr, cos_ptr, sin_ptr, y_ptr, n_heads, head_dim, half,
                 BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    i = tl.arange(0, BLOCK_HALF)
    c = tl.load(cos_ptr + token * half + i, mask=i < half, other=0.0).to(tl.float32)
    s = tl.load(sin_ptr + token * half + i, mask=i < half, other=0.0).to(tl.float32)
    mask = (heads[:, None] < n_heads) & (i[None, :] < half)
    first = token * n_heads * head_dim + heads[:, None] * head_dim + i[None, :]  # offsets of x[t, h, :half]
    x1 = tl.load(x_ptr + first, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptr + first + half, mask=mask, other=0.0).to(tl.float32)
    y1 = x1 * c[None, :] - x2 * s[None, :]
    y2 = x2 * c[None, :] + x1 * s[None, :]
    tl.store(y_ptr + first, y1.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(y_ptr + first + half, y2.to(y_ptr.dtype.element_ty), mask=mask)


BLOCK_H = 4  # tunable: 1, 2, 4, 8, 16
NUM_WARPS = 4  # tunable: 1, 2, 4, 8


def entry(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x, cos, sin = x.contiguous(), cos.contiguous(), sin.contiguous()
    y = torch.empty_like(x)
    n_tokens, n_heads, head_dim = x.shape
    half = head_dim // 2
    grid = (n_tokens, triton.cdiv(n_heads, BLOCK_H))
    _rope_kernel[grid](x, cos, sin, y, n_heads, head_dim, half,
                       BLOCK_H=BLOCK_H, BLOCK_HALF=triton.next_power_of_2(half), num_warps=NUM_WARPS)
    return y
