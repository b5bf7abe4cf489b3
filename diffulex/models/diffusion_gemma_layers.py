"""Building blocks of the DiffusionGemma text stack (Gemma-4-style MoE layers).

Facts from transformers' ``modeling_diffusion_gemma.py``: RMSNorm multiplies the fp32
normalized value by the weight before casting (and some norms have no weight); q/k are
RMS-normed per head before RoPE, v is RMS-normed without a weight; attention scale is 1.0;
full-attention layers have no ``v_proj`` and take V from the raw key projection (K=V); every
layer runs a dense GELU-tanh MLP and a softmax top-k MoE in parallel on the same residual.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from diffulex.layers.attention import Attention, KVCache
from diffulex.layers.attention_metadata import AttentionMetadata
from diffulex.layers.linear import (QKVParallelLinear, ReplicatedLinear, RowParallelLinear, copy_checked,
                                    default_weight_loader, narrow_checked)
from diffulex.layers.mlp import GatedMLP
from diffulex.layers.moe import StackedExperts
from diffulex.layers.parallel import TPGroup


class GemmaRMSNorm(nn.Module):
    """``x * (mean(x^2) + eps)^-0.5 [* weight]`` in fp32, cast back to the input dtype last."""

    def __init__(self, dim: int, eps: float, with_scale: bool = True, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.eps = eps
        if with_scale:
            self.weight = nn.Parameter(torch.ones(dim, dtype=dtype), requires_grad=False)
            self.weight.weight_loader = default_weight_loader
        else:
            self.register_parameter("weight", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [..., dim]
        xf = x.float()
        xf = xf * torch.pow(xf.pow(2).mean(-1, keepdim=True) + self.eps, -0.5)
        if self.weight is not None:
            xf = xf * self.weight.float()
        return xf.to(x.dtype)


class GeluTanhAndMul(nn.Module):
    """``gelu_tanh(gate) * up`` for an input laid out as ``[..., gate | up]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [N, 2I] -> [N, I]
        gate, up = x.chunk(2, dim=-1)
        return F.gelu(gate, approximate="tanh") * up


class GeluGatedMLP(GatedMLP):
    """``down(gelu_tanh(gate(x)) * up(x))``, TP-sharded like :class:`GatedMLP`."""

    def __init__(self, hidden_size: int, intermediate_size: int, tp: TPGroup, dtype: torch.dtype) -> None:
        super().__init__(hidden_size, intermediate_size, tp, dtype)
        self.act = GeluTanhAndMul()


class QKParallelLinear(QKVParallelLinear):
    """Fused ``q | k`` projection (no v rows) for the K=V full-attention layers."""

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int,
                 tp: TPGroup, dtype: torch.dtype) -> None:
        super().__init__(hidden_size, head_dim, num_heads, num_kv_heads, bias=False, tp=tp, dtype=dtype)
        rows = (self.num_heads_local + self.num_kv_heads_local) * head_dim
        self.weight = nn.Parameter(torch.empty(rows, hidden_size, dtype=dtype), requires_grad=False)
        self.weight.weight_loader = self.weight_loader

    def weight_loader(self, param, loaded_weight, shard_id=None) -> None:
        if shard_id not in ("q", "k"):
            raise ValueError(f"QKParallelLinear: shard_id {shard_id!r}, expected 'q' or 'k'")
        super().weight_loader(param, loaded_weight, shard_id)


def rope_inv_freq(rope: dict, head_dim: int) -> torch.Tensor:
    """Inverse frequencies ``[head_dim // 2]`` for one layer type (zeros = unrotated pairs).

    ``default``: ``theta^(-2i/d_rot)`` over ``d_rot = head_dim * partial_rotary_factor``.
    ``proportional``: the first ``partial_rotary_factor * head_dim / 2`` pairs get
    ``theta^(-2i/head_dim)``, the rest frequency 0; all divided by ``factor``.
    """
    rope_type, theta = rope.get("rope_type", "default"), rope["rope_theta"]
    partial = rope.get("partial_rotary_factor", 1.0)
    if rope_type == "default":
        dim = int(head_dim * partial)
        inv = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)
    elif rope_type == "proportional":
        angles = int(partial * head_dim // 2)
        inv = 1.0 / theta ** (torch.arange(0, 2 * angles, 2, dtype=torch.float) / head_dim)
        inv = inv / rope.get("factor", 1.0)
    else:
        raise ValueError(f"DiffusionGemma config: rope_type {rope_type!r} is not supported; "
                         f"only 'default' and 'proportional'")
    return torch.cat([inv, torch.zeros(head_dim // 2 - inv.numel())])


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE over the whole head; pair ``(i, i + D/2)`` turns by angle ``i``."""
    # x: [N, H, D]; cos, sin: [N, 1, D] (already in x's dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


@dataclass
class LayerInputs:
    """Per-forward values every layer reads: RoPE tables and metadata for each layer type."""

    rope: dict[str, tuple[torch.Tensor, torch.Tensor]]  # layer type -> (cos, sin) [N, 1, D]
    meta: dict[str, AttentionMetadata]  # layer type -> metadata (sliding: raised key_lo)
    is_canvas: torch.Tensor | None  # [N, 1] bool: decoder (canvas) tokens; None = none


class DiffusionGemmaAttention(nn.Module):
    """q/k/v projections, per-head norms, RoPE, paged attention (scale 1.0), output projection."""

    def __init__(self, hidden: int, num_heads: int, num_kv_heads: int, head_dim: int, has_v: bool,
                 eps: float, tp: TPGroup, dtype: torch.dtype) -> None:
        super().__init__()
        self.head_dim = head_dim
        cls = QKVParallelLinear if has_v else QKParallelLinear
        kwargs = {"bias": False} if has_v else {}
        self.qkv_proj = cls(hidden, head_dim, num_heads, num_kv_heads, tp=tp, dtype=dtype, **kwargs)
        self.num_heads = self.qkv_proj.num_heads_local
        self.num_kv_heads = self.qkv_proj.num_kv_heads_local
        self.has_v = has_v
        self.q_norm = GemmaRMSNorm(head_dim, eps, dtype=dtype)
        self.k_norm = GemmaRMSNorm(head_dim, eps, dtype=dtype)
        self.v_norm = GemmaRMSNorm(head_dim, eps, with_scale=False)
        self.o_proj = RowParallelLinear(num_heads * head_dim, hidden, tp=tp, dtype=dtype)
        self.attn = Attention(self.num_heads, self.num_kv_heads, head_dim, scale=1.0)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, meta: AttentionMetadata,
                kv_cache: KVCache | None) -> torch.Tensor:
        # x: [N, H]; cos, sin: [N, 1, D] -> [N, H]
        n, hq, hkv = x.shape[0], self.num_heads, self.num_kv_heads
        qkv = self.qkv_proj(x).view(n, -1, self.head_dim)  # [N, Hq + Hkv (+ Hkv), D]
        q, k = qkv[:, :hq], qkv[:, hq:hq + hkv]
        v = qkv[:, hq + hkv:] if self.has_v else k  # K=V: values reuse the raw key projection
        q = apply_rope(self.q_norm(q), cos, sin)
        k = apply_rope(self.k_norm(k), cos, sin)
        o = self.attn(q, k.contiguous(), self.v_norm(v).contiguous(), meta, kv_cache)  # [N, Hq, D]
        return self.o_proj(o.reshape(n, -1))


class GemmaRouter(nn.Module):
    """Softmax top-k router on the weightless-RMS-normed residual, with per-expert scales."""

    def __init__(self, hidden: int, num_experts: int, top_k: int, eps: float, dtype: torch.dtype) -> None:
        super().__init__()
        self.top_k = top_k
        self.norm = GemmaRMSNorm(hidden, eps, with_scale=False)
        self.root_size = hidden ** -0.5
        self.proj = ReplicatedLinear(hidden, num_experts, dtype=dtype)
        self.scale = nn.Parameter(torch.ones(hidden, dtype=dtype), requires_grad=False)
        self.scale.weight_loader = default_weight_loader
        self.per_expert_scale = nn.Parameter(torch.ones(num_experts, dtype=dtype), requires_grad=False)
        self.per_expert_scale.weight_loader = default_weight_loader

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x: [T, H] -> topk_ids [T, k] long, topk_weights [T, k] fp32
        scores = self.proj(self.norm(x) * self.scale * self.root_size)  # [T, E]
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32)
        weights, ids = probs.topk(self.top_k, dim=-1)
        weights = weights / weights.sum(-1, keepdim=True)
        return ids, weights * self.per_expert_scale[ids]


class GeluStackedExperts(StackedExperts):
    """Stacked experts with GELU-tanh gating; loads the checkpoint's whole 3-D stacks.

    ``gate_up_proj: [E, 2I, H]`` (gate | up) and ``down_proj: [E, H, I]`` are sliced to this
    rank's experts (shard_id None); per-expert shard ids still work as in the parent. The
    forward is the parent's (the per-expert loop, or the fused MoE with ``kernels="triton"``).
    """

    activation = "gelu_tanh"

    def weight_loader(self, param, loaded_weight, shard_id=None) -> None:
        if shard_id is not None:
            return super().weight_loader(param, loaded_weight, shard_id)
        with torch.no_grad():
            copy_checked(param.data, narrow_checked(loaded_weight, 0, self.expert_start, self.num_local,
                                                    self.num_experts))


class DiffusionGemmaLayer(nn.Module):
    """Attention block, then dense MLP and MoE in parallel, then ``* layer_scalar``.

    The encoder and decoder share every weight of a layer except the ``layer_scalar``
    buffer: canvas (decoder) tokens use ``layer_scalar``, the others ``encoder_layer_scalar``.
    """

    def __init__(self, cfg, layer_type: str, num_kv_heads: int, head_dim: int, tp: TPGroup,
                 dtype: torch.dtype) -> None:
        super().__init__()
        hidden, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.layer_type = layer_type

        def norm() -> GemmaRMSNorm:
            return GemmaRMSNorm(hidden, eps, dtype=dtype)

        self.input_layernorm, self.post_attention_layernorm = norm(), norm()
        self.pre_feedforward_layernorm, self.post_feedforward_layernorm = norm(), norm()
        self.pre_feedforward_layernorm_2, self.post_feedforward_layernorm_1 = norm(), norm()
        self.post_feedforward_layernorm_2 = norm()
        self.self_attn = DiffusionGemmaAttention(hidden, cfg.num_attention_heads, num_kv_heads, head_dim,
                                                 layer_type == "sliding_attention", eps, tp, dtype)
        self.mlp = GeluGatedMLP(hidden, cfg.intermediate_size, tp, dtype)
        self.router = GemmaRouter(hidden, cfg.num_experts, cfg.top_k_experts, eps, dtype)
        self.experts = GeluStackedExperts(cfg.num_experts, hidden, cfg.moe_intermediate_size, tp, dtype)
        for name in ("layer_scalar", "encoder_layer_scalar"):
            setattr(self, name, nn.Parameter(torch.ones(1, dtype=dtype), requires_grad=False))
            getattr(self, name).weight_loader = default_weight_loader

    def forward(self, h: torch.Tensor, inputs: LayerInputs, kv_cache: KVCache | None) -> torch.Tensor:
        # h: [N, H] -> [N, H]
        cos, sin = inputs.rope[self.layer_type]
        attn = self.self_attn(self.input_layernorm(h), cos, sin, inputs.meta[self.layer_type], kv_cache)
        h = h + self.post_attention_layernorm(attn)
        dense = self.post_feedforward_layernorm_1(self.mlp(self.pre_feedforward_layernorm(h)))
        topk_ids, topk_weights = self.router(h)  # routed on the residual itself
        moe = self.experts(self.pre_feedforward_layernorm_2(h), topk_ids, topk_weights)
        h = h + self.post_feedforward_layernorm(dense + self.post_feedforward_layernorm_2(moe))
        if inputs.is_canvas is None:
            return h * self.encoder_layer_scalar
        return h * torch.where(inputs.is_canvas, self.layer_scalar, self.encoder_layer_scalar)  # [N, 1]


class SelfConditioning(nn.Module):
    """``post_norm(e + mlp(pre_norm(s)))``: folds the previous step's soft embedding ``s`` into ``e``."""

    def __init__(self, hidden: int, intermediate: int, eps: float, tp: TPGroup, dtype: torch.dtype) -> None:
        super().__init__()
        self.pre_norm = GemmaRMSNorm(hidden, eps, dtype=dtype)
        self.mlp = GeluGatedMLP(hidden, intermediate, tp, dtype)
        self.post_norm = GemmaRMSNorm(hidden, eps, with_scale=False)

    def forward(self, embeds: torch.Tensor, soft: torch.Tensor | None) -> torch.Tensor:
        # embeds, soft: [N, H]; soft None = no previous prediction (the MLP of 0 is exactly 0)
        if soft is not None:
            embeds = embeds + self.mlp(self.pre_norm(soft))
        return self.post_norm(embeds)
