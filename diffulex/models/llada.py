"""LLaDA (LLaDA-8B and its block-causal adapters): an OLMo-style "llama" block decoder.

The computation is the shared pre-norm decoder (RMSNorm, GQA with full rotate-half RoPE,
SwiGLU with ``act(ff_proj(x)) * up_proj(x)``); what differs are OLMo config fields
(``d_model``, ``n_heads``, ``n_kv_heads``, ``n_layers``, ``mlp_hidden_size``, ...) and the
``model.transformer.*`` weight names: ``wte``, ``blocks.{i}.{q,k,v}_proj``, ``attn_out``,
``attn_norm``, ``ff_norm``, ``ff_proj`` (gate), ``up_proj``, ``ff_out`` (down), ``ln_f``,
and the LM head ``ff_out`` (or the embedding when ``weight_tying``). No shift.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from diffulex.models.base import Layout, cfg_get, check_default_rope, gated_mlp_layout
from diffulex.models.qwen_like import DecoderDims, QwenLikeForDiffusion, attention_layout, with_lm_head
from diffulex.registry import AutoModel

# OLMo options the published LLaDA checkpoints leave at these values; others are not implemented.
_REQUIRED_VALUES = {
    "block_type": ("llama",), "layer_norm_type": ("rms",), "activation_type": ("silu",), "rope": (True,),
    "alibi": (False,), "include_bias": (False,), "bias_for_layer_norm": (False, None),
    "attention_layer_norm": (False,), "input_emb_norm": (False,), "scale_logits": (False,), "clip_qkv": (None,),
}


def llada_dims(cfg: Any) -> DecoderDims:
    """:class:`DecoderDims` from LLaDA's OLMo field names; unsupported options are errors."""
    get = partial(cfg_get, cfg, family="LLaDA")
    check_default_rope(cfg, "LLaDA")
    for name, allowed in _REQUIRED_VALUES.items():
        value = get(name, allowed[0])
        if value not in allowed:
            raise ValueError(f"LLaDA config: {name}={value!r} is not supported; expected one of {allowed}")
    d_model, heads = get("d_model"), get("n_heads")
    return DecoderDims(
        vocab_size=get("embedding_size", None) or get("vocab_size"), hidden_size=d_model,
        intermediate_size=get("mlp_hidden_size", None) or get("mlp_ratio") * d_model,
        num_layers=get("n_layers"), num_heads=heads, num_kv_heads=get("n_kv_heads", None) or heads,
        head_dim=d_model // heads, rms_norm_eps=get("rms_norm_eps", 1e-5), rope_theta=get("rope_theta", 10000.0),
        max_position=get("max_sequence_length"), qkv_bias=bool(get("include_qkv_bias", False)), o_bias=False,
        qk_norm=False, tie_word_embeddings=bool(get("weight_tying", False)))


@AutoModel.register("llada")
class LLaDAForDiffusion(QwenLikeForDiffusion):
    """LLaDA over a flat varlen batch (bidirectional or block-causal per ``AttentionMetadata``).

    Logits span ``embedding_size`` rows (LLaDA's padded vocabulary; equal to ``vocab_size``
    in the published 8B checkpoints).
    """

    family_label = "LLaDA"

    def read_dims(self, cfg: Any) -> DecoderDims:
        return llada_dims(cfg)

    def checkpoint_layout(self) -> tuple[Layout, Layout]:
        """OLMo names under ``model.transformer.``, mapped onto the shared decoder's modules."""
        t = "model.transformer"
        req: Layout = {f"{t}.wte.weight": ("model.embed_tokens.weight", None),
                       f"{t}.ln_f.weight": ("model.norm.weight", None)}
        for i in range(self.dims.num_layers):
            b, m = f"{t}.blocks.{i}", f"model.layers.{i}"
            req.update(attention_layout(b, f"{m}.self_attn", self.dims,
                                        ("q_proj", "k_proj", "v_proj", "attn_out", "", "")))
            req[f"{b}.attn_norm.weight"] = (f"{m}.input_layernorm.weight", None)
            req[f"{b}.ff_norm.weight"] = (f"{m}.post_attention_layernorm.weight", None)
            req.update(gated_mlp_layout(b, f"{m}.mlp", ("ff_proj", "up_proj", "ff_out")))
        return with_lm_head(req, f"{t}.ff_out.weight", "model.embed_tokens.weight", self.dims.tie_word_embeddings)
