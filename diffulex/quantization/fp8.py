"""The FP8 weight format: e4m3 values with one float32 scale per ``[block_n, block_k]`` tile.

It is the Hugging Face block-wise FP8 layout (``quantization_config = {"quant_method": "fp8",
"weight_block_size": [128, 128], ...}``): a linear weight ``W [N, K]`` is stored as
``weight`` (float8_e4m3fn, ``[N, K]``) and ``weight_scale_inv`` (float32,
``[ceil(N / block_n), ceil(K / block_k)]``), and ``W ~ weight * weight_scale_inv`` broadcast
over each tile (despite its name the scale multiplies). A block entry larger than its
dimension covers the whole dimension: ``(1, K)`` is one scale per output channel,
``(N, K)`` one per tensor. Leading dimensions (experts ``[E, N, K]``) are kept.

This file is the PyTorch reference every FP8 kernel is tested against.
"""

from __future__ import annotations

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448.0


def scale_shape(shape: tuple[int, ...], block: tuple[int, int]) -> tuple[int, ...]:
    """Shape of the scales of a weight of ``shape [..., N, K]`` in tiles ``block``."""
    *lead, n, k = shape
    bn, bk = block
    return (*lead, -(-n // bn), -(-k // bk))


def _expand(scale: torch.Tensor, n: int, k: int, block: tuple[int, int]) -> torch.Tensor:
    """Scales ``[..., ceil(N/bn), ceil(K/bk)]`` repeated to ``[..., N, K]``."""
    bn, bk = min(block[0], max(n, 1)), min(block[1], max(k, 1))  # a block past its dimension is the dimension
    return scale.repeat_interleave(bn, dim=-2)[..., :n, :].repeat_interleave(bk, dim=-1)[..., :k]


def quantize_fp8(w: torch.Tensor, block: tuple[int, int] = (128, 128)) -> tuple[torch.Tensor, torch.Tensor]:
    """``w [..., N, K]`` -> (float8_e4m3fn ``[..., N, K]``, float32 scales ``scale_shape``).

    Each tile's scale is its largest magnitude / 448 (1 for an all-zero tile), so the tile's
    largest value maps to the largest finite e4m3 value; values round to nearest.
    """
    *lead, n, k = w.shape
    bn, bk = block
    if bn < 1 or bk < 1:
        raise ValueError(f"FP8 block {block}: both entries must be >= 1")
    bn, bk = min(bn, max(n, 1)), min(bk, max(k, 1))  # same tiles, no padding past the dimension
    block = (bn, bk)
    rows, cols = -(-n // bn), -(-k // bk)
    padded = torch.zeros((*lead, rows * bn, cols * bk), dtype=torch.float32, device=w.device)
    padded[..., :n, :k] = w.float()
    tiles = padded.unflatten(-1, (cols, bk)).unflatten(-3, (rows, bn))  # [..., rows, bn, cols, bk]
    amax = tiles.abs().amax(dim=(-3, -1))  # [..., rows, cols]
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    q = (w.float() / _expand(scale, n, k, block)).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, scale


def dequantize_fp8(q: torch.Tensor, scale: torch.Tensor, block: tuple[int, int],
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The weight ``[..., N, K]`` in ``dtype`` that ``(q, scale)`` stand for."""
    n, k = q.shape[-2:]
    if tuple(scale.shape) != scale_shape(tuple(q.shape), block):
        raise ValueError(f"FP8 scales of shape {tuple(scale.shape)} do not match a weight of shape "
                         f"{tuple(q.shape)} in blocks {tuple(block)} (expected {scale_shape(tuple(q.shape), block)})")
    return (q.float() * _expand(scale.float(), n, k, block)).to(dtype)
