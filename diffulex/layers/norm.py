"""RMS normalization."""

from __future__ import annotations

import torch
from torch import nn

from diffulex.layers.linear import default_weight_loader


class RMSNorm(nn.Module):
    """RMSNorm over the last dim, normalized in fp32.

    The normalized value is cast back to the input dtype before the weight multiply, the
    order the published LLaDA2/Llama-style modules use (it matters only in bf16).
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=dtype), requires_grad=False)
        self.weight.weight_loader = default_weight_loader

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [..., H]
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)
