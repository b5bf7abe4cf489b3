"""Rotary position embedding with optional partial rotation."""

from __future__ import annotations

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    """RoPE on the first ``rotary_dim`` dims of each head (rotate-half); the rest pass through.

    cos/sin are precomputed in fp32 for positions ``[0, max_position)``; positions may be
    arbitrary (non-contiguous, unsorted) per token.
    """

    def __init__(self, head_dim: int, rotary_dim: int, max_position: int, base: float) -> None:
        super().__init__()
        if rotary_dim % 2 or not 0 < rotary_dim <= head_dim:
            raise ValueError(f"RotaryEmbedding: rotary_dim {rotary_dim} must be even and in (0, head_dim={head_dim}]")
        self.head_dim = head_dim
        self.rotary_dim = rotary_dim
        inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim))
        freqs = torch.outer(torch.arange(max_position, dtype=torch.float64), inv_freq)  # [P, R/2]
        self.register_buffer("cos_cache", freqs.cos().float(), persistent=False)
        self.register_buffer("sin_cache", freqs.sin().float(), persistent=False)

    def rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # x: [N, H, D]; cos, sin: [N, 1, R/2]
        half = self.rotary_dim // 2
        x1 = x[..., :half].float()
        x2 = x[..., half: self.rotary_dim].float()
        rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)
        return torch.cat([rotated, x[..., self.rotary_dim:]], dim=-1)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # positions: [N]; q: [N, Hq, D]; k: [N, Hkv, D]
        cos = self.cos_cache[positions].unsqueeze(1)  # [N, 1, R/2]
        sin = self.sin_cache[positions].unsqueeze(1)
        return self.rotate(q, cos, sin), self.rotate(k, cos, sin)
