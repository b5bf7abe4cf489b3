"""Plain-PyTorch group-limited top-k of the LLaDA2 router (oracle of the Triton kernels)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def group_limited_topk(
    logits: torch.Tensor,
    expert_bias: torch.Tensor,
    top_k: int,
    n_group: int,
    topk_group: int,
    routed_scaling_factor: float,
    extra_slots: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits: [T, E]`` (or partial sums ``[S, T, E]``), ``expert_bias: [E]`` -> ``(ids [T, k + X] long,
    weights [T, k + X] fp32)``.

    What ``GroupLimitedSigmoidRouter.forward`` does after its linear layer: sigmoid scores,
    biased selection among the ``topk_group`` best groups (group score = sum of its top-2
    biased scores), weights = unbiased scores renormalized (``top_k > 1``) and scaled. The
    ``X = extra_slots`` appended columns are ids ``E .. E + X - 1`` with weight 1.
    """
    if logits.dim() == 3:
        logits = logits.float().sum(0)
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
    return append_extra_slots(topk_ids, weights * routed_scaling_factor, logits.shape[1], extra_slots)


def append_extra_slots(ids: torch.Tensor, weights: torch.Tensor, first_id: int, extra_slots: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """``ids, weights: [T, k]`` -> ``[T, k + X]``: every token also takes ids ``first_id ..`` with weight 1."""
    if not extra_slots:
        return ids, weights
    t = ids.shape[0]
    extra = torch.arange(first_id, first_id + extra_slots, device=ids.device, dtype=ids.dtype).expand(t, -1)
    return torch.cat([ids, extra], 1), torch.cat([weights.float(), weights.new_ones(t, extra_slots).float()], 1)


def moe_route(x: torch.Tensor, weight: torch.Tensor, expert_bias: torch.Tensor, top_k: int, n_group: int,
              topk_group: int, routed_scaling_factor: float, extra_slots: int = 0
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole router: fp32 logits ``x [T, H] @ weight [E, H]^T``, then :func:`group_limited_topk`."""
    logits = F.linear(x.float(), weight.float())  # [T, E]
    return group_limited_topk(logits, expert_bias, top_k, n_group, topk_group, routed_scaling_factor, extra_slots)
