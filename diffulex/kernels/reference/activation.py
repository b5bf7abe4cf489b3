"""Gated activation ``silu(gate) * up`` (plain PyTorch)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """``x: [T, 2I]`` laid out as ``[gate | up]`` -> ``[T, I]`` (two roundings to x's dtype, as eager PyTorch)."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up
