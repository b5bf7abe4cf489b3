"""Gated (SwiGLU) feed-forward block."""

from __future__ import annotations

import torch
from torch import nn

from diffulex.layers.activation import SiluAndMul
from diffulex.layers.linear import MergedColumnParallelLinear, RowParallelLinear
from diffulex.layers.parallel import TPGroup


class GatedMLP(nn.Module):
    """``down(silu(gate(x)) * up(x))`` with gate|up fused and column-parallel, down row-parallel."""

    def __init__(self, hidden_size: int, intermediate_size: int, tp: TPGroup = TPGroup(),
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(hidden_size, [intermediate_size] * 2, tp=tp, dtype=dtype)
        self.down_proj = RowParallelLinear(intermediate_size, hidden_size, tp=tp, dtype=dtype)
        self.act = SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [N, H] -> [N, H]
        return self.down_proj(self.act(self.gate_up_proj(x)))
