"""RMSNorm, optionally fused with the residual add that precedes it (plain PyTorch)."""

from __future__ import annotations

import torch


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``x: [T, H]`` -> ``weight * norm(x)``; with ``residual`` -> ``(weight * norm(x + residual), x + residual)``.

    The sum is rounded to ``x``'s dtype (it is the next residual stream), normalized in fp32,
    cast back to ``x``'s dtype and then multiplied by the weight: the order of the published
    Llama-style modules (it matters only in bf16).
    """
    if residual is not None:
        x = x + residual  # [T, H], the new residual stream
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    out = weight * xf.to(x.dtype)
    return out if residual is None else (out, x)
