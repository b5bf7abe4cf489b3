"""Paged attention over one layer's KV cache."""

from __future__ import annotations

import torch
from torch import nn

from diffulex.kernels import get_ops
from diffulex.layers.attention_metadata import AttentionMetadata

KVCache = tuple[torch.Tensor, torch.Tensor]


class Attention(nn.Module):
    """Writes this step's K/V into the layer's cache, then attends per ``AttentionMetadata``.

    The cache is ``(k_cache, v_cache)``, each ``[num_pages, page_size, Hkv, D]``, or None
    when no cache is allocated (then every ``context_len`` must be 0). ``kernels`` (set by
    the model runner, see ``layers.backend``) picks the reference or the Triton ops.
    """

    uses_kernels = True

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float,
                 softcap: float | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = scale
        self.softcap = softcap
        self.kernels = "torch"

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                meta: AttentionMetadata, kv_cache: KVCache | None, stored: bool = False) -> torch.Tensor:
        # q: [N, Hq, D]; k, v: [N, Hkv, D] -> [N, Hq, D]. ``stored``: the caller already wrote
        # this step's K/V into the cache (:func:`rope_then_attend`).
        ops = get_ops(q.device, self.kernels)
        k_cache, v_cache = kv_cache if kv_cache is not None else (None, None)
        if k_cache is not None and not stored:
            ops.store_kvcache(k, v, k_cache, v_cache, meta.slot_mapping)
        return ops.paged_attention(q, k, v, k_cache, v_cache, meta, self.scale, self.softcap)


def rope_then_attend(rotary: nn.Module, attn: Attention, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                     v: torch.Tensor, meta: AttentionMetadata, kv_cache: KVCache | None,
                     q_norm: nn.Module | None = None, k_norm: nn.Module | None = None) -> torch.Tensor:
    """Per-head norms + RoPE of ``q, k`` (``rotary``: a ``layers.rotary.RotaryEmbedding``), the KV-cache
    write, and ``attn``'s paged attention -> ``[N, Hq, D]``. The cache write rides on the RoPE
    kernel (the finished K heads are in registers there): one launch fewer per layer."""
    cache = (v, kv_cache[0], kv_cache[1], meta.slot_mapping) if kv_cache is not None else None
    q, k = rotary(positions, q, k, q_norm, k_norm, cache=cache)
    return attn(q, k, v, meta, kv_cache, stored=cache is not None)
