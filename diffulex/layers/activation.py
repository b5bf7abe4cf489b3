"""Gated activations."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SiluAndMul(nn.Module):
    """``silu(gate) * up`` for an input laid out as ``[..., gate | up]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [N, 2I] -> [N, I]
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up
