"""Per-head q/k RMSNorm (optional) followed by rotate-half RoPE on the first ``rotary_dim`` dims."""

from __future__ import annotations

import torch

from diffulex.kernels.reference.norm import rms_norm
from diffulex.kernels.reference.paged_attention import store_kvcache


def rotate_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x: [N, H, D]``, ``cos, sin: [N, 1, R/2]`` (fp32) -> RoPE on dims ``[0, R)``, the rest unchanged."""
    half = cos.shape[-1]
    x1 = x[..., :half].float()
    x2 = x[..., half: 2 * half].float()
    rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)
    return torch.cat([rotated, x[..., 2 * half:]], dim=-1)


def qk_norm_rope(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_cache: torch.Tensor,
                 sin_cache: torch.Tensor, q_weight: torch.Tensor | None = None,
                 k_weight: torch.Tensor | None = None, eps: float = 1e-6,
                 cache: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``q: [N, Hq, D]``, ``k: [N, Hkv, D]`` (views of a fused QKV output are fine), ``positions: [N]``,
    ``cos_cache, sin_cache: [P, R/2]`` fp32 -> new ``(q, k)``.

    With ``q_weight``/``k_weight`` ([D]) each head is RMS-normalized first (``eps``), as the
    q/k norms of LLaDA2 / Qwen3 / SDAR do. Callers must not reuse the inputs afterwards: the
    Triton version works in place. ``cache = (v, k_cache, v_cache, slot_mapping)``: also write the
    new K (after RoPE) and V into the paged caches (:func:`store_kvcache`).
    """
    if q_weight is not None:
        q, k = rms_norm(q, q_weight, eps), rms_norm(k, k_weight, eps)
    cos = cos_cache[positions].unsqueeze(1)  # [N, 1, R/2]
    sin = sin_cache[positions].unsqueeze(1)
    q, k = rotate_half(q, cos, sin), rotate_half(k, cos, sin)
    if cache is not None:
        v, k_cache, v_cache, slot_mapping = cache
        store_kvcache(k, v, k_cache, v_cache, slot_mapping)
    return q, k
