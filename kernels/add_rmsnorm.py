"""Seed: one program per row. Pass 1 forms h = x + residual (rounded to the storage dtype, as
the new residual), stores it and sums its squares; pass 2 recomputes h from x and residual
and writes the normalized output. fp32 math."""
import torch
import triton
import triton.language as tl

EPS = 1e-6


@triton.jit
def _add_rmsnorm_kernel(x_ptr, r_ptr, w_ptr, out_ptr, h_ptr, n_cols, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offset = row * n_cols
    sum_sq = tl.zeros((BLOCK,), tl.float32)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = tl.load(x_ptr + offset + cols, mask=mask, other=0.0).to(tl.float32)
        r = tl.load(r_ptr + offset + cols, mask=mask, other=0.0).to(tl.float32)
        h = (x + r).to(h_ptr.dtype.element_ty)
        tl.store(h_ptr + offset + cols, h, mask=mask)
        h = h.to(tl.float32)
        sum_sq += h * h
    rstd = 1.0 / tl.sqrt(tl.sum(sum_sq, axis=0) / n_cols + eps)
    # Recompute h rather than re-read h_ptr: no ordering question between this pass's loads
    # and the stores above.
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = tl.load(x_ptr + offset + cols, mask=mask, other=0.0).to(tl.float32)
        r = tl.load(r_ptr + offset + cols, mask=mask, other=0.0).to(tl.float32)
        h = (x + r).to(h_ptr.dtype.element_ty).to(tl.float32)
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + offset + cols, (h * rstd * w).to(out_ptr.dtype.element_ty), mask=mask)


BLOCK = 4096  # tunable: 1024, 2048, 4096, 8192
NUM_WARPS = 8  # tunable: 2, 4, 8, 16


def entry(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor):
    x, residual, weight = x.contiguous(), residual.contiguous(), weight.contiguous()
    out = torch.empty_like(x)
    new_residual = torch.empty_like(x)
    n_rows, n_cols = x.shape
    block = min(BLOCK, triton.next_power_of_2(n_cols))
    _add_rmsnorm_kernel[(n_rows,)](x, residual, weight, out, new_residual, n_cols, EPS,
                                   BLOCK=block, num_warps=NUM_WARPS)
    return out, new_residual
