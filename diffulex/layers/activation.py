"""Gated activations."""

from __future__ import annotations

import torch
from torch import nn

from diffulex.kernels import get_ops


class SiluAndMul(nn.Module):
    """``silu(gate) * up`` for an input laid out as ``[..., gate | up]``; ``kernels`` picks the op."""

    uses_kernels = True

    def __init__(self) -> None:
        super().__init__()
        self.kernels = "torch"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [N, 2I] -> [N, I]
        return get_ops(x.device, self.kernels).silu_and_mul(x)
