"""LLaDA2 MoE family (LLaDA2.0 / LLaDA2.1 mini and flash, DMax fine-tunes).

Architecture facts (from the published ``modeling_llada2_moe.py``): fused
``query_key_value`` viewed as ``(Hq + 2 Hkv) x head_dim``; per-head q/k RMSNorm before a
partial RoPE; layers below ``first_k_dense_replace`` use a dense gated MLP, the rest a
sigmoid group-limited MoE with an expert bias and shared experts. Module names mirror the
checkpoint names so the weight map in :meth:`LLaDA2MoeForDiffusion.checkpoint_layout`
stays a short, readable table.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn

from diffulex.layers.attention import Attention, KVCache, rope_then_attend
from diffulex.layers.attention_metadata import AttentionMetadata
from diffulex.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from diffulex.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from diffulex.layers.mlp import GatedMLP
from diffulex.layers.moe import GroupLimitedSigmoidRouter, StackedExperts
from diffulex.layers.norm import RMSNorm
from diffulex.layers.parallel import TPGroup
from diffulex.layers.rotary import RotaryEmbedding
from diffulex.models.base import DiffusionLM, Layout, PreNormDecoderLayer, check_default_rope, gated_mlp_layout
from diffulex.models.base import cfg_get as _cfg_get
from diffulex.registry import AutoModel

cfg_get = partial(_cfg_get, family="LLaDA2")
# The shared expert joins the fused MoE up to this many tokens per forward (a batch-1 block of
# 32): the fused MoE reads an expert once per block of 16+ tokens, a dense GEMM once per step.
FOLD_MAX_TOKENS = 32


class LLaDA2Attention(nn.Module):
    """Fused-qkv attention with per-head q/k RMSNorm before partial RoPE."""

    def __init__(self, cfg: Any, tp: TPGroup, dtype: torch.dtype) -> None:
        super().__init__()
        hidden = cfg_get(cfg, "hidden_size")
        num_heads = cfg_get(cfg, "num_attention_heads")
        num_kv_heads = cfg_get(cfg, "num_key_value_heads", None) or num_heads
        head_dim = cfg_get(cfg, "head_dim", None) or hidden // num_heads
        eps = cfg_get(cfg, "rms_norm_eps", 1e-6)
        self.head_dim = head_dim
        self.query_key_value = QKVParallelLinear(hidden, head_dim, num_heads, num_kv_heads,
                                                 bias=cfg_get(cfg, "use_qkv_bias", False), tp=tp, dtype=dtype)
        self.num_heads = self.query_key_value.num_heads_local
        self.num_kv_heads = self.query_key_value.num_kv_heads_local
        self.use_qk_norm = cfg_get(cfg, "use_qk_norm", True)
        if self.use_qk_norm:
            self.query_layernorm = RMSNorm(head_dim, eps, dtype)
            self.key_layernorm = RMSNorm(head_dim, eps, dtype)
        self.dense = RowParallelLinear(num_heads * head_dim, hidden, bias=cfg_get(cfg, "use_bias", True),
                                       tp=tp, dtype=dtype)
        rotary_dim = int(head_dim * cfg_get(cfg, "partial_rotary_factor", 1.0))
        self.rotary = RotaryEmbedding(head_dim, rotary_dim, cfg_get(cfg, "max_position_embeddings"),
                                      cfg_get(cfg, "rope_theta"))
        self.attn = Attention(self.num_heads, self.num_kv_heads, head_dim, scale=head_dim ** -0.5)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                kv_cache: KVCache | None) -> torch.Tensor:
        # x: [N, H]
        n = x.shape[0]
        qkv = self.query_key_value(x).view(n, -1, self.head_dim)  # [N, Hq + 2 Hkv, D]
        q, k, v = qkv.split([self.num_heads, self.num_kv_heads, self.num_kv_heads], dim=1)
        norms = (self.query_layernorm, self.key_layernorm) if self.use_qk_norm else (None, None)
        o = rope_then_attend(self.rotary, self.attn, positions, q, k, v, meta, kv_cache, *norms)  # [N, Hq, D]
        return self.dense(o.reshape(n, -1))


class LLaDA2SparseMoe(nn.Module):
    """Routed experts (sigmoid group-limited router) plus optional shared experts."""

    def __init__(self, cfg: Any, tp: TPGroup, dtype: torch.dtype, ep: TPGroup = TPGroup()) -> None:
        super().__init__()
        hidden = cfg_get(cfg, "hidden_size")
        width = cfg_get(cfg, "moe_intermediate_size")
        score_function = cfg_get(cfg, "score_function", "sigmoid")
        if score_function != "sigmoid":
            raise ValueError(f"LLaDA2 config: score_function {score_function!r} is not supported; only 'sigmoid'")
        self.gate = GroupLimitedSigmoidRouter(
            hidden, cfg_get(cfg, "num_experts"), cfg_get(cfg, "num_experts_per_tok"),
            cfg_get(cfg, "n_group"), cfg_get(cfg, "topk_group"), cfg_get(cfg, "routed_scaling_factor"), dtype)
        num_shared = cfg_get(cfg, "num_shared_experts", None) or 0
        # One shared expert on one shard: its weights live in an extra slot of the stacked
        # experts (the GatedMLP's parameters are views of it), so at small batches the fused
        # MoE computes it with the routed experts instead of three more GEMM launches.
        fold = num_shared == 1 and tp.size * ep.size == 1
        self.experts = StackedExperts(cfg_get(cfg, "num_experts"), hidden, width, tp, dtype, ep=ep,
                                      extra_slots=1 if fold else 0)
        self.shared_experts = GatedMLP(hidden, width * num_shared, tp, dtype) if num_shared else None
        if fold:
            for linear, view in zip((self.shared_experts.gate_up_proj, self.shared_experts.down_proj),
                                    self.experts.slot(0)):
                old = linear.weight
                linear.weight = nn.Parameter(view, requires_grad=False)
                linear.weight.__dict__.update(old.__dict__)  # weight_loader and the like

    def after_quantization(self) -> None:
        """After the FP8 pass (:mod:`diffulex.quantization.apply`): the shared expert's layers, quantized
        on their own, read the stacked slot's FP8 values and scales again when they are the same (same
        tiles), so the fold above stays and the duplicate copy is freed."""
        shared, experts = self.shared_experts, self.experts
        if shared is None or not experts.extra_slots or not getattr(experts, "is_fp8", False):
            return
        layers = (shared.gate_up_proj, shared.down_proj)
        if type(layers[0]) is not MergedColumnParallelLinear or type(layers[1]) is not RowParallelLinear:
            return
        views, scales = experts.slot(0), experts.slot_scales(0)
        for linear, view, scale in zip(layers, views, scales):
            if (linear.quant_block is None or tuple(linear.weight.shape) != tuple(view.shape)
                    or tuple(linear.weight_scale_inv.shape) != tuple(scale.shape)
                    or not torch.equal(linear.weight.view(torch.uint8), view.view(torch.uint8))
                    or not torch.equal(linear.weight_scale_inv, scale)):
                return
        for linear, view, scale in zip(layers, views, scales):
            loader = linear.weight.__dict__.get("weight_loader")
            linear.weight = nn.Parameter(view, requires_grad=False)
            if loader is not None:
                linear.weight.weight_loader = loader
            linear.weight_scale_inv = scale

    def _folds_shared(self, n_tok: int) -> bool:
        """Run the shared expert inside the fused MoE: Triton path, its weights still the stacked
        slot (no unmerged LoRA wrapper around its layers), and few tokens (``FOLD_MAX_TOKENS``)."""
        shared, experts = self.shared_experts, self.experts
        if shared is None or not experts.extra_slots or experts.kernels == "torch" or n_tok > FOLD_MAX_TOKENS:
            return False
        if type(shared.gate_up_proj) is not MergedColumnParallelLinear or type(shared.down_proj) is not RowParallelLinear:
            return False
        w13, w2 = experts.slot(0)
        return shared.gate_up_proj.weight.data_ptr() == w13.data_ptr() and shared.down_proj.weight.data_ptr() == w2.data_ptr()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [T, H] -> [T, H]
        if self._folds_shared(x.shape[0]):  # the router appends the shared expert's slot: [T, k + 1]
            topk_ids, topk_weights = self.gate(x, extra_slots=1)
            return self.experts(x, topk_ids, topk_weights, extra=True)
        topk_ids, topk_weights = self.gate(x)  # [T, k], [T, k]
        y = self.experts(x, topk_ids, topk_weights)
        if self.shared_experts is not None:
            y = y + self.shared_experts(x)
        return y


class LLaDA2DecoderLayer(PreNormDecoderLayer):
    """Pre-norm block: attention then dense MLP or MoE, each with a residual."""

    attention_name = "attention"

    def __init__(self, cfg: Any, layer_idx: int, tp: TPGroup, dtype: torch.dtype, ep: TPGroup = TPGroup()) -> None:
        super().__init__()
        hidden, eps = cfg_get(cfg, "hidden_size"), cfg_get(cfg, "rms_norm_eps", 1e-6)
        self.input_layernorm = RMSNorm(hidden, eps, dtype)
        self.attention = LLaDA2Attention(cfg, tp, dtype)
        self.post_attention_layernorm = RMSNorm(hidden, eps, dtype)
        self.is_moe = is_moe_layer(cfg, layer_idx)
        if self.is_moe:
            self.mlp = LLaDA2SparseMoe(cfg, tp, dtype, ep)
        else:
            self.mlp = GatedMLP(hidden, cfg_get(cfg, "intermediate_size"), tp, dtype)



def is_moe_layer(cfg: Any, layer_idx: int) -> bool:
    return cfg_get(cfg, "num_experts", None) is not None and layer_idx >= cfg_get(cfg, "first_k_dense_replace", 0)


class LLaDA2Model(nn.Module):
    """Embedding, decoder stack and final norm."""

    def __init__(self, cfg: Any, tp: TPGroup, dtype: torch.dtype, ep: TPGroup = TPGroup()) -> None:
        super().__init__()
        hidden = cfg_get(cfg, "hidden_size")
        self.word_embeddings = VocabParallelEmbedding(cfg_get(cfg, "vocab_size"), hidden, tp, dtype)
        self.layers = nn.ModuleList(
            LLaDA2DecoderLayer(cfg, i, tp, dtype, ep) for i in range(cfg_get(cfg, "num_hidden_layers")))
        self.norm = RMSNorm(hidden, cfg_get(cfg, "rms_norm_eps", 1e-6), dtype)


@AutoModel.register("llada2")
class LLaDA2MoeForDiffusion(DiffusionLM):
    """LLaDA2 MoE over a flat varlen batch described by :class:`AttentionMetadata`.

    ``forward`` returns final-norm hidden states of every query token; ``compute_logits``
    projects the rows the caller picked (usually ``hidden[meta.logits_indices]``).
    """

    family_label = "LLaDA2"
    # Some LLaDA2 exports name the router bias after DeepSeek-V3.
    checkpoint_aliases = {"e_score_correction_bias": "expert_bias"}

    def __init__(self, hf_config: Any, tp: TPGroup = TPGroup(), dtype: torch.dtype = torch.bfloat16,
                 ep: TPGroup = TPGroup()) -> None:
        """``ep``: the expert-parallel group; routed experts are sharded over it (see StackedExperts)."""
        super().__init__()
        check_default_rope(hf_config, "LLaDA2")
        self.config = hf_config
        self.tp = tp
        self.dtype = dtype
        self.tie_word_embeddings = bool(cfg_get(hf_config, "tie_word_embeddings", False))
        self.ep = ep
        self.model = LLaDA2Model(hf_config, tp, dtype, ep)
        self.lm_head = ParallelLMHead(cfg_get(hf_config, "vocab_size"), cfg_get(hf_config, "hidden_size"), tp, dtype)
        if self.tie_word_embeddings:
            self.lm_head.weight = self.model.word_embeddings.weight

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``[N, H]`` (strategies mix these into soft inputs)."""
        return self.model.word_embeddings(input_ids)

    def checkpoint_layout(self) -> tuple[Layout, Layout]:
        """``(required, optional)`` maps: real checkpoint name -> (parameter name, shard_id)."""
        cfg = self.config
        req: Layout = {}

        def same(name: str) -> None:
            req[name] = (name, None)

        def gated_mlp(ckpt: str, mod: str) -> None:
            req.update(gated_mlp_layout(ckpt, mod))

        same("model.word_embeddings.weight")
        same("model.norm.weight")
        for i, layer in enumerate(self.model.layers):
            p = f"model.layers.{i}"
            same(f"{p}.input_layernorm.weight")
            same(f"{p}.post_attention_layernorm.weight")
            for name, _ in layer.attention.named_parameters():
                same(f"{p}.attention.{name}")
            if not layer.is_moe:
                gated_mlp(f"{p}.mlp", f"{p}.mlp")
                continue
            same(f"{p}.mlp.gate.weight")
            if cfg_get(cfg, "moe_router_enable_expert_bias", True):
                same(f"{p}.mlp.gate.expert_bias")
            for e in range(layer.mlp.experts.num_experts):
                for part, param in (("gate", "w13"), ("up", "w13"), ("down", "w2")):
                    req[f"{p}.mlp.experts.{e}.{part}_proj.weight"] = (f"{p}.mlp.experts.{param}", (e, part))
            if layer.mlp.shared_experts is not None:
                gated_mlp(f"{p}.mlp.shared_experts", f"{p}.mlp.shared_experts")
        optional: Layout = {}
        if self.tie_word_embeddings:
            optional["lm_head.weight"] = ("model.word_embeddings.weight", None)
        else:
            same("lm_head.weight")
        return req, optional

    def may_stay_unloaded(self, param_name: str) -> bool:
        """The router bias keeps its zeros when the config turns it off."""
        return param_name.endswith("expert_bias") and not cfg_get(self.config, "moe_router_enable_expert_bias", True)
