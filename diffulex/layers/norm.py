"""RMS normalization, optionally fused with the residual add before it."""

from __future__ import annotations

import torch
from torch import nn

from diffulex.kernels import get_ops
from diffulex.layers.linear import default_weight_loader


class RMSNorm(nn.Module):
    """RMSNorm over the last dim, normalized in fp32.

    The normalized value is cast back to the input dtype before the weight multiply, the
    order the published LLaDA2/Llama-style modules use (it matters only in bf16).
    ``norm(x, residual)`` returns ``(norm(x + residual), x + residual)``: decoder layers
    pass the residual stream through it, so the add and the norm are one kernel.
    ``kernels`` (set by the model runner) picks the reference or the Triton op.
    """

    uses_kernels = True

    def __init__(self, hidden_size: int, eps: float = 1e-6, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=dtype), requires_grad=False)
        self.weight.weight_loader = default_weight_loader
        self.kernels = "torch"

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        # x, residual: [..., H]
        return get_ops(x.device, self.kernels).rms_norm(x, self.weight, self.eps, residual)
