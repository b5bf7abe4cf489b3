"""RMSNorm with the preceding residual add fused in: one read of ``x`` (and ``residual``), one write each.

Same contract as ``kernels.reference.rms_norm``: the sum is rounded to ``x``'s dtype and
returned as the new residual stream; the norm runs in fp32, is cast to ``x``'s dtype, then
multiplied by the weight and rounded again. One program per row; rows may be strided.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from diffulex.kernels.triton._runtime import next_pow2, pdl_enter, pdl_kwargs


@triton.jit
def _rms_norm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr,
    stride_x, stride_r, stride_o, stride_ro, hidden, eps,
    HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr,
):
    pdl_enter(PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < hidden
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + row * stride_r + offs, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)
        tl.store(res_out_ptr + row * stride_ro + offs, x, mask=mask)
    xf = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / hidden + eps)
    xn = (xf * rstd).to(x_ptr.dtype.element_ty)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0)
    out = w.to(tl.float32) * xn.to(tl.float32)
    tl.store(out_ptr + row * stride_o + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``x: [..., H]`` (``residual`` the same shape) -> normalized ``[..., H]`` (and the new residual)."""
    shape, hidden = x.shape, x.shape[-1]
    if x.stride(-1) != 1 or weight.stride(-1) != 1 or (residual is not None and residual.stride(-1) != 1):
        raise ValueError("rms_norm: x, residual and weight need a contiguous last dim")
    x2 = x.reshape(-1, hidden)  # [T, H] (a view for the usual contiguous rows)
    rows = x2.shape[0]
    out = torch.empty((rows, hidden), dtype=torch.result_type(weight, x), device=x.device)
    if residual is not None:
        r2 = residual.reshape(-1, hidden)
        res_out = torch.empty((rows, hidden), dtype=x.dtype, device=x.device)
    else:
        r2 = res_out = x2  # placeholders, never touched
    if rows:
        block = next_pow2(hidden)
        _rms_norm_kernel[(rows,)](
            x2, r2, weight, out, res_out, x2.stride(0), r2.stride(0), out.stride(0), res_out.stride(0),
            hidden, float(eps), HAS_RESIDUAL=residual is not None, BLOCK=block,
            num_warps=8 if block >= 2048 else 4, **pdl_kwargs(x.device),
        )
    out = out.view(shape)
    return out if residual is None else (out, res_out.view(shape))
