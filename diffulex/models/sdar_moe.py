"""SDAR-MoE (e.g. SDAR-30B-A3B): the SDAR (Qwen3) decoder with Qwen3-MoE feed-forward blocks.

Layer ``i`` is sparse unless ``i in mlp_only_layers`` or ``(i + 1) % decoder_sparse_step``;
sparse layers route with softmax over fp32 gate logits, top ``num_experts_per_tok``,
renormalized when ``norm_topk_prob``. Names: ``mlp.gate.weight`` and
``mlp.experts.{e}.{gate,up,down}_proj.weight``. An optional Qwen2-MoE-style shared expert
(``shared_expert_intermediate_size`` > 0: ``mlp.shared_expert.*`` scaled by
``sigmoid(mlp.shared_expert_gate(x))``) is added to the routed output.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn

from diffulex.layers.linear import ReplicatedLinear
from diffulex.layers.mlp import GatedMLP
from diffulex.layers.moe import SoftmaxTopKRouter, StackedExperts
from diffulex.layers.parallel import TPGroup
from diffulex.models.base import Layout, cfg_get, gated_mlp_layout
from diffulex.models.qwen_like import DecoderDims, QwenDecoderLayer, QwenLikeForDiffusion
from diffulex.models.sdar import sdar_dims
from diffulex.registry import AutoModel


class SDARMoeSparseBlock(nn.Module):
    """Softmax top-k routed experts plus an optional sigmoid-gated shared expert."""

    def __init__(self, hidden: int, num_experts: int, top_k: int, norm_topk_prob: bool, width: int,
                 shared_width: int, tp: TPGroup, dtype: torch.dtype, ep: TPGroup = TPGroup()) -> None:
        super().__init__()
        self.gate = SoftmaxTopKRouter(hidden, num_experts, top_k, norm_topk_prob, dtype)
        self.experts = StackedExperts(num_experts, hidden, width, tp, dtype, ep=ep)
        self.shared_expert = GatedMLP(hidden, shared_width, tp, dtype) if shared_width else None
        self.shared_expert_gate = ReplicatedLinear(hidden, 1, tp=tp, dtype=dtype) if shared_width else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [T, H] -> [T, H]
        topk_ids, topk_weights = self.gate(x)  # [T, k], [T, k]
        y = self.experts(x, topk_ids, topk_weights)
        if self.shared_expert is not None:
            y = y + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)  # gate: [T, 1]
        return y


@AutoModel.register("sdar_moe")
class SDARMoeForDiffusion(QwenLikeForDiffusion):
    """SDAR-MoE over a flat varlen batch (block-causal per ``AttentionMetadata``)."""

    family_label = "SDAR-MoE"

    def __init__(self, hf_config: Any, tp: TPGroup = TPGroup(), dtype: torch.dtype = torch.bfloat16,
                 ep: TPGroup = TPGroup()) -> None:
        """``ep``: the expert-parallel group; routed experts are sharded over it (see StackedExperts)."""
        self._ep = ep  # read by make_mlp while the base class builds the layers
        super().__init__(hf_config, tp, dtype)

    def read_dims(self, cfg: Any) -> DecoderDims:
        return sdar_dims(cfg, "SDAR-MoE")

    def is_sparse(self, layer_idx: int) -> bool:
        get = partial(cfg_get, self.config, family="SDAR-MoE")
        step = get("decoder_sparse_step", 1) or 1
        return (layer_idx not in (get("mlp_only_layers", None) or []) and get("num_experts") > 0
                and (layer_idx + 1) % step == 0)

    def make_mlp(self, layer_idx: int, tp: TPGroup, dtype: torch.dtype) -> nn.Module:
        if not self.is_sparse(layer_idx):
            return super().make_mlp(layer_idx, tp, dtype)
        get = partial(cfg_get, self.config, family="SDAR-MoE")
        return SDARMoeSparseBlock(self.dims.hidden_size, get("num_experts"), get("num_experts_per_tok"),
                                  bool(get("norm_topk_prob", False)), get("moe_intermediate_size"),
                                  get("shared_expert_intermediate_size", 0) or 0, tp, dtype, self._ep)

    def mlp_layout(self, ckpt: str, mod: str, layer: QwenDecoderLayer) -> Layout:
        mlp = layer.mlp
        if not isinstance(mlp, SDARMoeSparseBlock):
            return super().mlp_layout(ckpt, mod, layer)
        out: Layout = {f"{ckpt}.gate.weight": (f"{mod}.gate.weight", None)}
        for e in range(mlp.experts.num_experts):
            for part, param in (("gate", "w13"), ("up", "w13"), ("down", "w2")):
                out[f"{ckpt}.experts.{e}.{part}_proj.weight"] = (f"{mod}.experts.{param}", (e, part))
        if mlp.shared_expert is not None:
            out.update(gated_mlp_layout(f"{ckpt}.shared_expert", f"{mod}.shared_expert"))
            out[f"{ckpt}.shared_expert_gate.weight"] = (f"{mod}.shared_expert_gate.weight", None)
        return out
