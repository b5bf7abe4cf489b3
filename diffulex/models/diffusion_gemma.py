"""DiffusionGemma (transformers' ``DiffusionGemmaForBlockDiffusion``), text path only.

transformers runs one Gemma-4-style MoE stack in two roles that share every weight:

- **encoder**: prompt and committed blocks, causal (sliding layers: the last
  ``sliding_window`` keys, ``key_lo = pos - W + 1``); it writes the KV cache.
- **decoder**: the canvas (one block of ``canvas_length`` tokens), bidirectional over the
  cached prefix plus the whole canvas; it reads the cache and never writes it. Its input
  embedding goes through the self-conditioning module, its sliding layers see only the last
  ``W - 1`` prefix keys (``key_lo = canvas_start - W + 1`` for every canvas token), and
  its layers use their own ``layer_scalar`` buffers.

Here both roles run in one flat batch: ``canvas_mask`` marks the decoder tokens. Logits are
``30 * tanh(lm_head(h) / 30)`` (final softcap) with the LM head tied to the embedding.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, Iterable

import torch
from torch import nn

from diffulex.layers.attention import KVCache
from diffulex.layers.attention_metadata import AttentionMetadata
from diffulex.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from diffulex.layers.parallel import TPGroup
from diffulex.models.base import DiffusionLM, Layout
from diffulex.models.base import cfg_get as _cfg_get
from diffulex.models.diffusion_gemma_layers import (DiffusionGemmaLayer, GemmaRMSNorm, LayerInputs,
                                                    SelfConditioning, rope_inv_freq)
from diffulex.registry import AutoModel

cfg_get = partial(_cfg_get, family="DiffusionGemma")
LAYER_TYPES = ("sliding_attention", "full_attention")
# The encoder always owns a vision tower; this text-only model ignores its tensors.
VISION_PREFIXES = ("model.encoder.vision_tower.", "model.encoder.embed_vision.")
ENCODER_PREFIX = "model.encoder.language_model."


def layer_attn_shape(text: Any, layer_idx: int) -> tuple[int, int]:
    """``(num_key_value_heads, head_dim)`` of one layer, after its ``per_layer_config`` override."""
    plc = cfg_get(text, "per_layer_config", None)
    if plc is None:
        return cfg_get(text, "num_key_value_heads"), cfg_get(text, "head_dim")
    entry = plc[layer_idx]
    return entry.num_key_value_heads, entry.head_dim


def check_text_config(text: Any) -> None:
    """Reject the config variants this implementation does not compute."""
    if cfg_get(text, "use_bidirectional_attention", None) == "all":
        raise ValueError("DiffusionGemma config: use_bidirectional_attention='all' (bidirectional encoder) "
                         "is not supported; only None or 'vision' (text tokens causal)")
    if cfg_get(text, "attention_bias", False):
        raise ValueError("DiffusionGemma config: attention_bias=True is not supported")
    if cfg_get(text, "hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        raise ValueError(f"DiffusionGemma config: hidden_activation {cfg_get(text, 'hidden_activation')!r} "
                         f"is not supported; only 'gelu_pytorch_tanh'")
    bad = sorted(set(cfg_get(text, "layer_types")) - set(LAYER_TYPES))
    if bad:
        raise ValueError(f"DiffusionGemma config: layer_types {bad} unknown; allowed {list(LAYER_TYPES)}")


class DiffusionGemmaModel(nn.Module):
    """Embedding, self-conditioning module, layer stack and final norm."""

    def __init__(self, text: Any, tp: TPGroup, dtype: torch.dtype) -> None:
        super().__init__()
        hidden, eps = cfg_get(text, "hidden_size"), cfg_get(text, "rms_norm_eps", 1e-6)
        self.embed_tokens = VocabParallelEmbedding(cfg_get(text, "vocab_size"), hidden, tp, dtype)
        self.self_conditioning = SelfConditioning(hidden, cfg_get(text, "intermediate_size"), eps, tp, dtype)
        self.layers = nn.ModuleList(
            DiffusionGemmaLayer(text, kind, *layer_attn_shape(text, i), tp, dtype)
            for i, kind in enumerate(cfg_get(text, "layer_types")))
        self.norm = GemmaRMSNorm(hidden, eps, dtype=dtype)


@AutoModel.register("diffusion_gemma")
class DiffusionGemmaForDiffusion(DiffusionLM):
    """DiffusionGemma's encoder and decoder roles over one flat varlen batch.

    Forward contract (what a strategy feeds, matching transformers' ``generate``):

    - encoder tokens (``canvas_mask`` False): the prompt, and each finished block (its
      argmax canvas) once denoising ends; plain causal ``key_lo = 0, key_hi = pos + 1``
      (the model raises ``key_lo`` for sliding layers itself), K/V written at ``slot_mapping``.
    - canvas tokens (``canvas_mask`` True): all ``canvas_length`` tokens of the block being
      denoised, at positions ``[start, start + canvas_length)`` right after the encoded
      prefix; ``key_lo = 0, key_hi = start + canvas_length``; ``slot_mapping = -1`` (the
      decoder never writes the cache). At most one canvas per sequence per forward, fed whole
      (its first token anchors the sliding window of the decoder's sliding layers).
    - ``self_conditioning``: ``[N, V]`` probabilities of the previous denoising step; rows of
      canvas tokens with no previous step are all zero (reference: zero soft embedding),
      rows of encoder tokens are ignored. transformers feeds the previous step's logits after
      the temperature logits processor, cast to the model dtype, then softmaxed in fp32:
      ``softmax(processed_logits.to(dtype).float())``. None = no previous step anywhere.
    """

    family_label = "DiffusionGemma"

    def __init__(self, hf_config: Any, tp: TPGroup = TPGroup(), dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        text = cfg_get(hf_config, "text_config")
        check_text_config(text)
        if not cfg_get(hf_config, "tie_word_embeddings", True):
            raise ValueError("DiffusionGemma config: tie_word_embeddings=False (separate encoder and decoder "
                             "weights) is not supported")
        self.config, self.text_config, self.tp, self.dtype = hf_config, text, tp, dtype
        self.sliding_window = cfg_get(text, "sliding_window")
        self.softcap = cfg_get(text, "final_logit_softcapping", None)
        self.model = DiffusionGemmaModel(text, tp, dtype)
        self.lm_head = ParallelLMHead(cfg_get(text, "vocab_size"), cfg_get(text, "hidden_size"), tp, dtype)
        self.lm_head.weight = self.model.embed_tokens.weight
        # bf16 rounds sqrt(hidden) (e.g. 55.43 -> 55.5) exactly as the reference buffer does.
        # A host number (device="cpu": the model also builds on the meta device, e.g. for convert).
        self.embed_scale = float(torch.tensor(cfg_get(text, "hidden_size") ** 0.5, dtype=dtype, device="cpu"))
        rope, layer_types = cfg_get(text, "rope_parameters"), cfg_get(text, "layer_types")
        for kind in set(layer_types):
            head_dim = layer_attn_shape(text, layer_types.index(kind))[1]
            self.register_buffer(f"{kind}_inv_freq", rope_inv_freq(rope[kind], head_dim), persistent=False)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Scaled token embeddings ``[N, H]`` (``embedding * sqrt(hidden)``)."""
        return self.model.embed_tokens(input_ids) * self.embed_scale

    def graph_inputs(self, extras: dict) -> dict:
        """Strategy inputs for a CUDA-graphed forward: the ``[N, V]`` self-conditioning
        probabilities become their ``[N, H]`` embeddings here (eagerly), so the graph's static
        buffer is ~100x smaller (V = 262k)."""
        extras = dict(extras)
        if "self_conditioning" in extras:
            extras["self_conditioning_embeds"] = self.soft_embed(extras.pop("self_conditioning"))
        return extras

    def soft_embed(self, probs: torch.Tensor) -> torch.Tensor:
        """Expected scaled embedding ``probs @ E * sqrt(hidden)``: ``[N, V] -> [N, H]``."""
        emb = self.model.embed_tokens
        rows = emb.vocab_end - emb.vocab_start
        local = probs[:, emb.vocab_start:emb.vocab_end].to(self.dtype) @ emb.weight[:rows]  # [N, H]
        return self.tp.all_reduce(local) * self.embed_scale

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor, meta: AttentionMetadata,
                kv_caches: list[KVCache] | None = None, inputs_embeds: torch.Tensor | None = None,
                self_conditioning: torch.Tensor | None = None,
                canvas_mask: torch.Tensor | None = None,
                self_conditioning_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states after the final norm, ``[N, H]`` (see the class docstring).

        ``canvas_mask: [N] bool`` marks decoder (canvas) tokens; None = all encoder tokens.
        ``inputs_embeds`` replaces ``embed(input_ids)`` (already scaled).
        ``self_conditioning_embeds: [N, H]`` = ``soft_embed(self_conditioning)``, computed by the
        caller (see :meth:`graph_inputs`); pass one of the two.
        """
        if self_conditioning is not None:
            if self_conditioning_embeds is not None:
                raise ValueError("DiffusionGemmaForDiffusion.forward: pass self_conditioning or its embeds, not both")
            self_conditioning_embeds = self.soft_embed(self_conditioning)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("DiffusionGemmaForDiffusion.forward: pass exactly one of input_ids and inputs_embeds")
        if self_conditioning_embeds is not None and canvas_mask is None:
            raise ValueError("DiffusionGemmaForDiffusion.forward: self_conditioning needs canvas_mask")
        layers = self.model.layers
        if kv_caches is not None and len(kv_caches) != len(layers):
            raise ValueError(f"kv_caches has {len(kv_caches)} entries for {len(layers)} layers")
        h = self.embed(input_ids) if inputs_embeds is None else inputs_embeds.to(self.dtype)  # [N, H]
        is_canvas = None
        if canvas_mask is not None:
            is_canvas = canvas_mask.view(-1, 1)  # [N, 1]
            h = torch.where(is_canvas, self.model.self_conditioning(h, self_conditioning_embeds), h)
        inputs = LayerInputs(self.rope_tables(positions, h.dtype), self.layer_metas(meta, canvas_mask), is_canvas)
        for i, layer in enumerate(layers):
            h = layer(h, inputs, kv_caches[i] if kv_caches is not None else None)
        return self.model.norm(h)

    def rope_tables(self, positions: torch.Tensor, dtype: torch.dtype) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per layer type, ``(cos, sin): [N, 1, D]`` in ``dtype`` (fp32 angles, as the reference)."""
        tables = {}
        for kind in LAYER_TYPES:
            inv_freq = getattr(self, f"{kind}_inv_freq", None)
            if inv_freq is None:
                continue
            freqs = positions.float()[:, None] * inv_freq[None, :]  # [N, D/2]
            angles = torch.cat([freqs, freqs], dim=-1)[:, None, :]  # [N, 1, D]
            tables[kind] = (angles.cos().to(dtype), angles.sin().to(dtype))
        return tables

    def layer_metas(self, meta: AttentionMetadata, canvas_mask: torch.Tensor | None) -> dict[str, AttentionMetadata]:
        """Full layers use ``meta`` as given; sliding layers raise ``key_lo`` to ``anchor - W + 1``.

        The anchor is the token itself for encoder tokens and the first canvas position of its
        sequence for canvas tokens (the decoder sees the last ``W - 1`` prefix keys).
        """
        anchor = meta.positions  # [N]
        if canvas_mask is not None:
            n, s = meta.num_tokens, meta.num_seqs
            seq_of = torch.repeat_interleave(torch.arange(s, device=anchor.device), meta.cu_seqlens_q.diff(),
                                             output_size=n)  # [N]
            big = torch.iinfo(torch.long).max
            first = torch.full((s,), big, dtype=torch.long, device=anchor.device).scatter_reduce(
                0, seq_of, torch.where(canvas_mask, anchor, big), "amin")  # [S]
            anchor = torch.where(canvas_mask, first[seq_of], anchor)
        key_lo = torch.maximum(meta.key_lo, anchor - self.sliding_window + 1)
        # for_forward: each attention pattern's grid map is computed once per forward, not per layer.
        return {"full_attention": meta.for_forward(),
                "sliding_attention": dataclasses.replace(meta, key_lo=key_lo).for_forward()}

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Softcapped full-vocabulary logits ``[M, V]`` in float32 for hidden rows ``[M, H]``."""
        logits = self.lm_head(hidden).float()
        if self.softcap is None:
            return logits
        return torch.tanh(logits / self.softcap) * self.softcap

    def checkpoint_layout(self) -> tuple[Layout, Layout]:
        """``(required, optional)``: transformers' saved names -> (parameter name, shard_id)."""
        req: Layout = {}
        dec = "model.decoder"
        req[f"{dec}.embed_tokens.weight"] = ("model.embed_tokens.weight", None)
        req[f"{dec}.norm.weight"] = ("model.norm.weight", None)
        sc = f"{dec}.self_conditioning"
        req[f"{sc}.pre_norm.weight"] = ("model.self_conditioning.pre_norm.weight", None)
        for j, part in enumerate(("gate_proj", "up_proj")):
            req[f"{sc}.{part}.weight"] = ("model.self_conditioning.mlp.gate_up_proj.weight", j)
        req[f"{sc}.down_proj.weight"] = ("model.self_conditioning.mlp.down_proj.weight", None)
        for i, layer in enumerate(self.model.layers):
            c, p = f"{dec}.layers.{i}", f"model.layers.{i}"
            req[f"model.encoder.language_model.layers.{i}.layer_scalar"] = (f"{p}.encoder_layer_scalar", None)
            for name in ("layer_scalar", "router.proj.weight", "router.scale", "router.per_expert_scale",
                         "self_attn.q_norm.weight", "self_attn.k_norm.weight", "self_attn.o_proj.weight",
                         "mlp.down_proj.weight", "input_layernorm.weight", "post_attention_layernorm.weight",
                         "pre_feedforward_layernorm.weight", "post_feedforward_layernorm.weight",
                         "pre_feedforward_layernorm_2.weight", "post_feedforward_layernorm_1.weight",
                         "post_feedforward_layernorm_2.weight"):
                req[f"{c}.{name}"] = (f"{p}.{name}", None)
            for j, part in enumerate(("gate_proj", "up_proj")):
                req[f"{c}.mlp.{part}.weight"] = (f"{p}.mlp.gate_up_proj.weight", j)
            req[f"{c}.experts.gate_up_proj"] = (f"{p}.experts.w13", None)
            req[f"{c}.experts.down_proj"] = (f"{p}.experts.w2", None)
            for sid in ("q", "k", "v") if layer.self_attn.has_v else ("q", "k"):
                req[f"{c}.self_attn.{sid}_proj.weight"] = (f"{p}.self_attn.qkv_proj.weight", sid)
        optional: Layout = {"lm_head.weight": ("model.embed_tokens.weight", None)}
        return req, optional

    def load_named_tensors(self, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Strict load of the text tensors; the vision tower's tensors are skipped.

        transformers saves the weights the encoder shares with the decoder once, under
        ``model.decoder.*``; a copy under ``model.encoder.language_model.*`` is accepted in
        its place (both copies at once is a duplicate error). The encoder's own
        ``layer_scalar`` buffers keep their name.
        """
        super().load_named_tensors(
            (n if n.endswith("layer_scalar") else n.replace(ENCODER_PREFIX, "model.decoder.", 1), t)
            for n, t in tensors if not n.startswith(VISION_PREFIXES))
