"""Fixed-quota sampling for the ``vanilla`` loop: exactly n masks per block per step."""

from __future__ import annotations

from typing import Any

import torch

from ..config.enums import RemaskingKind
from ..engine.batch import host_to_device, rows_on
from ..registry import AutoSampler
from .base import Decision, Sampler, fills_per_request
from .select import select_tokens


def top_quota(score: torch.Tensor, eligible: torch.Tensor, block_of_row: torch.Tensor,
              quota: torch.Tensor) -> torch.Tensor:
    """score, eligible, block_of_row: [M]; quota: [NB]. The ``quota[b]`` best eligible rows of each block."""
    m = score.shape[0]
    score = torch.where(eligible, score, torch.full_like(score, float("-inf")))
    by_score = torch.argsort(score, descending=True, stable=True)  # [M]; ties -> lower row first
    by_block = by_score[torch.argsort(block_of_row[by_score], stable=True)]  # grouped by block, best first
    blocks = block_of_row[by_block]
    # Counts by scatter, the result by scatter: no host sync (bincount and boolean indexing sync on CUDA).
    counts = torch.zeros(quota.shape[0], dtype=torch.long, device=score.device).scatter_add_(
        0, blocks, torch.ones_like(blocks))  # [NB]
    first = torch.cumsum(counts, 0) - counts  # [NB] start of each block's group
    rank = torch.arange(m, device=score.device) - first[blocks]
    take = (rank < quota[blocks]) & eligible[by_block]  # [M], in by_block order
    return torch.zeros(m, dtype=torch.bool, device=score.device).scatter_(0, by_block, take)


@AutoSampler.register("vanilla")
class QuotaSampler(Sampler):
    """Fill each block's quota of masks: the most confident ones, or random ones."""

    def decide(self, batch: Any, logits: torch.Tensor, reqs: list[Any], forbidden: torch.Tensor) -> list[Decision]:
        dev, cfg = logits.device, self.config
        db = rows_on(batch, dev)  # row / block tensors on the device, without a stream sync
        tokens, conf = select_tokens(logits, forbidden, self.row_params(batch, reqs, dev), cfg.sampling.confidence,
                                     kernels=self.kernels)
        is_mask = db.row_token == cfg.model.mask_token_id  # [M]
        score = conf
        if cfg.strategy.remasking == RemaskingKind.RANDOM:
            gens = [reqs[i].generator for i in batch.row_request.tolist()]
            score = host_to_device(torch.stack([torch.rand((), generator=g) for g in gens]), dev) if gens else conf
        accept = top_quota(score, is_mask, db.row_block, db.block_quota)
        fills = fills_per_request(len(reqs), accept, db.row_request, db.row_position, tokens, conf)  # the one sync
        return [Decision(fills=f) for f in fills]
