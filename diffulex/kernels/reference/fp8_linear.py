"""Reference FP8-weight linear: dequantize the weight to the activation dtype, then ``F.linear``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffulex.quantization.fp8 import dequantize_fp8


def fp8_linear(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, block: tuple[int, int],
               bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x [..., K]`` (any float dtype), ``q`` float8_e4m3fn ``[N, K]``, ``scale`` float32
    ``[ceil(N / bn), ceil(K / bk)]`` -> ``x @ (q * scale)^T (+ bias)`` ``[..., N]`` in ``x.dtype``.

    The weight is dequantized in float32 and rounded once to ``x.dtype``; the product
    accumulates in float32 (the matmul of that dtype).
    """
    w = dequantize_fp8(q, scale, tuple(block), dtype=x.dtype)  # [N, K]
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))
