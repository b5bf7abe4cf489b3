"""Rotary position embedding with optional partial rotation (and the q/k norms fused before it)."""

from __future__ import annotations

import torch
from torch import nn

from diffulex.kernels import get_ops


class RotaryEmbedding(nn.Module):
    """RoPE on the first ``rotary_dim`` dims of each head (rotate-half); the rest pass through.

    cos/sin are precomputed in fp32 for positions ``[0, max_position)``; positions may be
    arbitrary (non-contiguous, unsorted) per token. ``kernels`` (set by the model runner)
    picks the reference or the Triton op (which works in place on q and k).
    """

    uses_kernels = True

    def __init__(self, head_dim: int, rotary_dim: int, max_position: int, base: float) -> None:
        super().__init__()
        if rotary_dim % 2 or not 0 < rotary_dim <= head_dim:
            raise ValueError(f"RotaryEmbedding: rotary_dim {rotary_dim} must be even and in (0, head_dim={head_dim}]")
        self.head_dim = head_dim
        self.rotary_dim = rotary_dim
        self.kernels = "torch"
        # In float32, as the published modeling code computes them (inverse frequencies, the
        # position x frequency product, cos / sin): float64 angles differ by up to ~1e-4 at
        # long positions, which moves logits.
        inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim))
        freqs = torch.outer(torch.arange(max_position, dtype=torch.float32), inv_freq)  # [P, R/2] fp32
        self.register_buffer("cos_cache", freqs.cos(), persistent=False)
        self.register_buffer("sin_cache", freqs.sin(), persistent=False)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                q_norm: nn.Module | None = None, k_norm: nn.Module | None = None,
                cache: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE of ``q: [N, Hq, D]``, ``k: [N, Hkv, D]`` at ``positions: [N]``, after the per-head
        RMSNorms ``q_norm``/``k_norm`` (:class:`~diffulex.layers.norm.RMSNorm` over D) when given.
        The inputs must not be used afterwards (the Triton op overwrites them). ``cache = (v,
        k_cache, v_cache, slot_mapping)`` also writes the finished K and V into the paged cache
        (one kernel with the RoPE; see :func:`~diffulex.layers.attention.rope_then_attend`)."""
        ops = get_ops(q.device, self.kernels)
        if q_norm is None:
            return ops.qk_norm_rope(q, k, positions, self.cos_cache, self.sin_cache, cache=cache)
        return ops.qk_norm_rope(q, k, positions, self.cos_cache, self.sin_cache, q_norm.weight, k_norm.weight,
                                q_norm.eps, cache=cache)
