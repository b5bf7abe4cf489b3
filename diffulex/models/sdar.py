"""SDAR (JetLM) dense block-diffusion models: a Qwen3 decoder.

Qwen3 facts: per-head RMSNorm of q and k (``self_attn.q_norm`` / ``k_norm``, width
head_dim) before RoPE; ``attention_bias`` switches biases on all of q/k/v/o; ``head_dim``
is its own field (not necessarily hidden / heads).
"""

from __future__ import annotations

from typing import Any

from diffulex.models.base import cfg_get
from diffulex.models.qwen_like import DecoderDims, QwenLikeForDiffusion, qwen_dims
from diffulex.registry import AutoModel


def sdar_dims(cfg: Any, family: str) -> DecoderDims:
    """Qwen3 dims: q/k norm on, biases per ``attention_bias``."""
    bias = bool(cfg_get(cfg, "attention_bias", False, family=family))
    return qwen_dims(cfg, family, qkv_bias=bias, o_bias=bias, qk_norm=True)


@AutoModel.register("sdar")
class SDARForDiffusion(QwenLikeForDiffusion):
    """SDAR over a flat varlen batch (block-causal per ``AttentionMetadata``)."""

    family_label = "SDAR"

    def read_dims(self, cfg: Any) -> DecoderDims:
        return sdar_dims(cfg, "SDAR")
