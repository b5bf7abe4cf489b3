"""Token → expert routers. Each returns ``(topk_ids [T, k] long, topk_weights [T, k] fp32)``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from diffulex.kernels.reference.moe_router import append_extra_slots
from diffulex.layers.linear import default_weight_loader


class GroupLimitedSigmoidRouter(nn.Module):
    """LLaDA2 / DeepSeek-V3-style router.

    Scores are ``sigmoid(W x)`` in fp32. Selection uses ``scores + expert_bias``: experts are
    split into ``n_group`` groups, a group scores the sum of its top-2 biased scores, the
    best ``topk_group`` groups are kept and the top ``top_k`` experts inside them chosen.
    The weights are the *unbiased* scores of the chosen experts, renormalized to sum 1
    when ``top_k > 1``, times ``routed_scaling_factor``. With ``kernels == "triton"`` the
    router runs as two Triton kernels (split-K fp32 logits, then the fused selection; same
    function). ``forward(x, extra_slots=X)`` appends X columns of ids ``E ..`` with weight 1
    (extra slots of the stacked experts that every token uses: LLaDA2's shared expert).
    """

    uses_kernels = True

    def __init__(self, hidden_size: int, num_experts: int, top_k: int, n_group: int, topk_group: int,
                 routed_scaling_factor: float, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if num_experts % n_group:
            raise ValueError(f"num_experts={num_experts} is not divisible by n_group={n_group}")
        if not 1 <= topk_group <= n_group or top_k > topk_group * (num_experts // n_group):
            raise ValueError(f"router: top_k={top_k}, topk_group={topk_group}, n_group={n_group} cannot select "
                             f"{top_k} of the {topk_group * (num_experts // n_group)} experts in the kept groups")
        if num_experts // n_group < 2:
            raise ValueError(f"router: groups of {num_experts // n_group} expert(s); group scores need >= 2")
        self.num_experts = num_experts
        self.top_k = top_k
        self.n_group = n_group
        self.topk_group = topk_group
        self.routed_scaling_factor = routed_scaling_factor
        # Held in fp32 (the logits are computed in fp32): no per-forward cast of the weight.
        self.weight = nn.Parameter(torch.empty(num_experts, hidden_size, dtype=torch.float32), requires_grad=False)
        self.weight.weight_loader = default_weight_loader
        # A loaded checkpoint tensor, kept fp32 as in the published model.
        self.expert_bias = nn.Parameter(torch.zeros(num_experts, dtype=torch.float32), requires_grad=False)
        self.expert_bias.weight_loader = default_weight_loader
        self.kernels = "torch"

    def forward(self, x: torch.Tensor, extra_slots: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        # x: [T, H] -> ids, weights [T, k + extra_slots]
        if self.kernels != "torch":
            from diffulex.kernels import get_ops

            return get_ops(x.device, self.kernels).moe_route(
                x, self.weight, self.expert_bias, self.top_k, self.n_group, self.topk_group,
                self.routed_scaling_factor, extra_slots)
        logits = F.linear(x.float(), self.weight)  # [T, E]
        scores = torch.sigmoid(logits)  # [T, E]
        biased = scores + self.expert_bias  # [T, E]
        t = x.shape[0]
        grouped = biased.view(t, self.n_group, -1)  # [T, G, E/G]
        group_scores = grouped.topk(2, dim=-1).values.sum(-1)  # [T, G]
        keep = group_scores.topk(self.topk_group, dim=-1, sorted=False).indices  # [T, topk_group]
        group_mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, keep, True)  # [T, G]
        expert_mask = group_mask.unsqueeze(-1).expand_as(grouped).reshape(t, -1)  # [T, E]
        topk_ids = biased.masked_fill(~expert_mask, float("-inf")).topk(self.top_k, dim=-1).indices  # [T, k]
        weights = scores.gather(1, topk_ids)  # [T, k]
        if self.top_k > 1:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return append_extra_slots(topk_ids, weights * self.routed_scaling_factor, self.num_experts, extra_slots)


class SoftmaxTopKRouter(nn.Module):
    """Qwen-MoE-style router: softmax over fp32 logits, top-k, optional renormalization."""

    def __init__(self, hidden_size: int, num_experts: int, top_k: int, norm_topk_prob: bool,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.top_k = top_k
        self.norm_topk_prob = norm_topk_prob
        # Held in fp32 (the logits are computed in fp32): no per-forward cast of the weight.
        self.weight = nn.Parameter(torch.empty(num_experts, hidden_size, dtype=torch.float32), requires_grad=False)
        self.weight.weight_loader = default_weight_loader

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x: [T, H]
        probs = torch.softmax(F.linear(x.float(), self.weight), dim=-1)  # [T, E]
        weights, topk_ids = probs.topk(self.top_k, dim=-1)  # [T, k]
        if self.norm_topk_prob:
            weights = weights / weights.sum(-1, keepdim=True)
        return topk_ids, weights
