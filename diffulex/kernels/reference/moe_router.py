"""Plain-PyTorch group-limited top-k of the LLaDA2 router, from its logits (oracle of the Triton kernel)."""

from __future__ import annotations

import torch


def group_limited_topk(
    logits: torch.Tensor,
    expert_bias: torch.Tensor,
    top_k: int,
    n_group: int,
    topk_group: int,
    routed_scaling_factor: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits: [T, E]``, ``expert_bias: [E]`` -> ``(ids [T, k] long, weights [T, k] fp32)``.

    What ``GroupLimitedSigmoidRouter.forward`` does after its linear layer: sigmoid scores,
    biased selection among the ``topk_group`` best groups (group score = sum of its top-2
    biased scores), weights = unbiased scores renormalized (``top_k > 1``) and scaled.
    """
    scores = torch.sigmoid(logits.float())  # [T, E]
    biased = scores + expert_bias.float()  # [T, E]
    t = logits.shape[0]
    grouped = biased.view(t, n_group, -1)  # [T, G, E/G]
    group_scores = grouped.topk(2, dim=-1).values.sum(-1)  # [T, G]
    keep = group_scores.topk(topk_group, dim=-1, sorted=False).indices  # [T, topk_group]
    group_mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, keep, True)  # [T, G]
    expert_mask = group_mask.unsqueeze(-1).expand_as(grouped).reshape(t, -1)  # [T, E]
    topk_ids = biased.masked_fill(~expert_mask, float("-inf")).topk(top_k, dim=-1).indices  # [T, k]
    weights = scores.gather(1, topk_ids)  # [T, k]
    if top_k > 1:
        weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
    return topk_ids, weights * routed_scaling_factor
