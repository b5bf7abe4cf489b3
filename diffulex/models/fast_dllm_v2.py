"""Fast-dLLM v2 (NVIDIA): a Qwen2.5 decoder fine-tuned for block diffusion.

Same Qwen2 architecture and weight names as Dream (q/k/v biases, no q/k norm); the
block size ``bd_size`` and the in-block shift are strategy concerns, not model ones.
"""

from __future__ import annotations

from typing import Any

from diffulex.models.qwen_like import DecoderDims, QwenLikeForDiffusion, qwen_dims
from diffulex.registry import AutoModel


@AutoModel.register("fast_dllm_v2")
class FastDLLMV2ForDiffusion(QwenLikeForDiffusion):
    """Fast-dLLM v2 over a flat varlen batch (block-causal per ``AttentionMetadata``)."""

    family_label = "Fast-dLLM v2"

    def read_dims(self, cfg: Any) -> DecoderDims:
        return qwen_dims(cfg, "Fast-dLLM v2", qkv_bias=True, o_bias=False, qk_norm=False)
