"""The pre-norm Llama/Qwen decoder that dream, sdar, sdar_moe, fast_dllm_v2 and llada share.

One layer: ``h += o_proj(attn(rope(norm_qk(q)), rope(norm_qk(k)), v))`` on
``input_layernorm(h)``, then ``h += mlp(post_attention_layernorm(h))``; a final RMSNorm and
an LM head (optionally tied to the embedding). Families differ only in config field names,
projection biases, per-head q/k RMSNorm (Qwen3 / SDAR), the MLP (dense or MoE) and the
checkpoint names, so a family file sets :class:`DecoderDims` and its weight-name table.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from diffulex.layers.attention import Attention, KVCache, rope_then_attend
from diffulex.layers.attention_metadata import AttentionMetadata
from diffulex.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from diffulex.layers.linear import QKVParallelLinear, RowParallelLinear
from diffulex.layers.mlp import GatedMLP
from diffulex.layers.norm import RMSNorm
from diffulex.layers.parallel import TPGroup
from diffulex.layers.rotary import RotaryEmbedding
from diffulex.models.base import (DiffusionLM, Layout, PreNormDecoderLayer, cfg_get, check_default_rope,
                                  gated_mlp_layout)


@dataclass(frozen=True)
class DecoderDims:
    """Sizes and switches of the shared decoder, normalized from a family's own config fields."""

    vocab_size: int  # rows of the embedding and of the LM head
    hidden_size: int
    intermediate_size: int  # dense SwiGLU width
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position: int  # RoPE table length
    qkv_bias: bool  # biases on q/k/v projections
    o_bias: bool  # bias on the output projection
    qk_norm: bool  # per-head RMSNorm of q and k before RoPE
    tie_word_embeddings: bool


def qwen_dims(cfg: Any, family: str, qkv_bias: bool, o_bias: bool, qk_norm: bool) -> DecoderDims:
    """:class:`DecoderDims` from Qwen2/Qwen3 config field names; unsupported options are errors."""
    get = partial(cfg_get, cfg, family=family)
    check_default_rope(cfg, family)
    if get("use_sliding_window", False):
        raise ValueError(f"{family} config: use_sliding_window=True is not supported; set it to false")
    if get("hidden_act", "silu") != "silu":
        raise ValueError(f"{family} config: hidden_act {get('hidden_act')!r} is not supported; only 'silu'")
    heads, hidden = get("num_attention_heads"), get("hidden_size")
    return DecoderDims(
        vocab_size=get("vocab_size"), hidden_size=hidden, intermediate_size=get("intermediate_size"),
        num_layers=get("num_hidden_layers"), num_heads=heads,
        num_kv_heads=get("num_key_value_heads", None) or heads,
        head_dim=get("head_dim", None) or hidden // heads, rms_norm_eps=get("rms_norm_eps", 1e-6),
        rope_theta=get("rope_theta", 10000.0), max_position=get("max_position_embeddings"),
        qkv_bias=qkv_bias, o_bias=o_bias, qk_norm=qk_norm,
        tie_word_embeddings=bool(get("tie_word_embeddings", False)))


class QwenAttention(nn.Module):
    """GQA attention: fused q|k|v (column-parallel by heads), optional q/k norm, full RoPE."""

    def __init__(self, dims: DecoderDims, rotary: RotaryEmbedding, tp: TPGroup, dtype: torch.dtype) -> None:
        super().__init__()
        d = self.head_dim = dims.head_dim
        self.qkv_proj = QKVParallelLinear(dims.hidden_size, d, dims.num_heads, dims.num_kv_heads,
                                          bias=dims.qkv_bias, tp=tp, dtype=dtype)
        self.num_heads = self.qkv_proj.num_heads_local
        self.num_kv_heads = self.qkv_proj.num_kv_heads_local
        self.qk_norm = dims.qk_norm
        if self.qk_norm:
            self.q_norm = RMSNorm(d, dims.rms_norm_eps, dtype)
            self.k_norm = RMSNorm(d, dims.rms_norm_eps, dtype)
        self.o_proj = RowParallelLinear(dims.num_heads * d, dims.hidden_size, bias=dims.o_bias, tp=tp, dtype=dtype)
        self.rotary = rotary
        self.attn = Attention(self.num_heads, self.num_kv_heads, d, scale=d ** -0.5)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                kv_cache: KVCache | None) -> torch.Tensor:
        # x: [N, H] -> [N, H]
        n = x.shape[0]
        qkv = self.qkv_proj(x).view(n, -1, self.head_dim)  # [N, Hq + 2 Hkv, D]
        q, k, v = qkv.split([self.num_heads, self.num_kv_heads, self.num_kv_heads], dim=1)
        norms = (self.q_norm, self.k_norm) if self.qk_norm else (None, None)
        o = rope_then_attend(self.rotary, self.attn, positions, q, k, v, meta, kv_cache, *norms)  # [N, Hq, D]
        return self.o_proj(o.reshape(n, -1))


class QwenDecoderLayer(PreNormDecoderLayer):
    """Pre-norm block: attention then ``mlp`` (dense or MoE), each with a residual."""

    def __init__(self, dims: DecoderDims, rotary: RotaryEmbedding, mlp: nn.Module, tp: TPGroup,
                 dtype: torch.dtype) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(dims.hidden_size, dims.rms_norm_eps, dtype)
        self.self_attn = QwenAttention(dims, rotary, tp, dtype)
        self.post_attention_layernorm = RMSNorm(dims.hidden_size, dims.rms_norm_eps, dtype)
        self.mlp = mlp



class QwenModel(nn.Module):
    """Embedding, decoder stack (MLPs from ``make_mlp(layer_idx)``) and final norm.

    One RoPE table serves every layer: at Qwen2's 131072 positions a table per layer would
    cost gigabytes.
    """

    def __init__(self, dims: DecoderDims, make_mlp, tp: TPGroup, dtype: torch.dtype) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(dims.vocab_size, dims.hidden_size, tp, dtype)
        rotary = RotaryEmbedding(dims.head_dim, dims.head_dim, dims.max_position, dims.rope_theta)
        self.layers = nn.ModuleList(
            QwenDecoderLayer(dims, rotary, make_mlp(i), tp, dtype) for i in range(dims.num_layers))
        self.norm = RMSNorm(dims.hidden_size, dims.rms_norm_eps, dtype)


class QwenLikeForDiffusion(DiffusionLM, ABC):
    """The shared decoder over a flat varlen batch; families override :meth:`read_dims`
    (config → :class:`DecoderDims`), optionally :meth:`make_mlp` / :meth:`mlp_layout`, and
    the checkpoint name table (:meth:`checkpoint_layout`, Qwen names by default).
    """

    def __init__(self, hf_config: Any, tp: TPGroup = TPGroup(), dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.config = hf_config
        self.tp = tp
        self.dtype = dtype
        self.dims = self.read_dims(hf_config)
        self.model = QwenModel(self.dims, lambda i: self.make_mlp(i, tp, dtype), tp, dtype)
        self.lm_head = ParallelLMHead(self.dims.vocab_size, self.dims.hidden_size, tp, dtype)
        if self.dims.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @abstractmethod
    def read_dims(self, cfg: Any) -> DecoderDims:
        """Implemented by each subclass."""

    def make_mlp(self, layer_idx: int, tp: TPGroup, dtype: torch.dtype) -> nn.Module:
        """The feed-forward block of layer ``layer_idx``: a dense SwiGLU unless overridden."""
        return GatedMLP(self.dims.hidden_size, self.dims.intermediate_size, tp, dtype)

    def mlp_layout(self, ckpt: str, mod: str, layer: QwenDecoderLayer) -> Layout:
        """Checkpoint names of one layer's MLP (``ckpt`` and ``mod`` are the ``.mlp`` prefixes)."""
        return gated_mlp_layout(ckpt, mod)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``[N, H]`` (strategies mix these into soft inputs)."""
        return self.model.embed_tokens(input_ids)

    def checkpoint_layout(self) -> tuple[Layout, Layout]:
        """Qwen2/Qwen3 names: ``model.embed_tokens``, ``model.layers.{i}.self_attn.{q,k,v,o}_proj``, ..."""
        req: Layout = {n: (n, None) for n in ("model.embed_tokens.weight", "model.norm.weight")}
        for i, layer in enumerate(self.model.layers):
            p = f"model.layers.{i}"
            req.update(attention_layout(f"{p}.self_attn", f"{p}.self_attn", self.dims,
                                        ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm")))
            for norm in ("input_layernorm", "post_attention_layernorm"):
                req[f"{p}.{norm}.weight"] = (f"{p}.{norm}.weight", None)
            req.update(self.mlp_layout(f"{p}.mlp", f"{p}.mlp", layer))
        return with_lm_head(req, "lm_head.weight", "model.embed_tokens.weight", self.dims.tie_word_embeddings)


def attention_layout(ckpt: str, mod: str, dims: DecoderDims, names: tuple[str, ...]) -> Layout:
    """Separate q/k/v (+ o, q/k norm) checkpoint tensors into a :class:`QwenAttention` at ``mod``.

    ``names`` = checkpoint names of (q, k, v, o, q_norm, k_norm) under ``ckpt``.
    """
    q, k, v, o, qn, kn = names
    out: Layout = {}
    kinds = ("weight", "bias") if dims.qkv_bias else ("weight",)
    for part, shard in ((q, "q"), (k, "k"), (v, "v")):
        for kind in kinds:
            out[f"{ckpt}.{part}.{kind}"] = (f"{mod}.qkv_proj.{kind}", shard)
    for kind in ("weight", "bias") if dims.o_bias else ("weight",):
        out[f"{ckpt}.{o}.{kind}"] = (f"{mod}.o_proj.{kind}", None)
    if dims.qk_norm:
        out[f"{ckpt}.{qn}.weight"] = (f"{mod}.q_norm.weight", None)
        out[f"{ckpt}.{kn}.weight"] = (f"{mod}.k_norm.weight", None)
    return out


def with_lm_head(req: Layout, head: str, embedding_param: str, tied: bool) -> tuple[Layout, Layout]:
    """Add the LM head: required and its own, or (tied) optional and loaded into the embedding."""
    if tied:
        return req, {head: (embedding_param, None)}
    req[head] = ("lm_head.weight", None)
    return req, {}
