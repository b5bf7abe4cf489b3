"""Dream family (Dream-7B, DiffuCoder): a Qwen2 decoder trained as a masked diffusion model.

Qwen2 facts: biases on q/k/v (not on o_proj), no q/k norm, Qwen2 weight names
(``model.embed_tokens``, ``model.layers.{i}.self_attn.{q,k,v,o}_proj``, ``lm_head``).
Dream is a *shift* family; the shift is applied by the strategy, not here.
"""

from __future__ import annotations

from typing import Any

from diffulex.models.qwen_like import DecoderDims, QwenLikeForDiffusion, qwen_dims
from diffulex.registry import AutoModel


@AutoModel.register("dream")
class DreamForDiffusion(QwenLikeForDiffusion):
    """Dream over a flat varlen batch (bidirectional or block-causal per ``AttentionMetadata``)."""

    family_label = "Dream"

    def read_dims(self, cfg: Any) -> DecoderDims:
        return qwen_dims(cfg, "Dream", qkv_bias=True, o_bias=False, qk_norm=False)
