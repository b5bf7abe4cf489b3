"""Fixed-quota sampling for the ``vanilla`` loop: exactly n masks per block per step."""

from __future__ import annotations

from typing import Any

import torch

from ..config.enums import RemaskingKind
from ..registry import AutoSampler
from .base import Decision, Sampler
from .select import select_tokens


def top_quota(score: torch.Tensor, eligible: torch.Tensor, block_of_row: torch.Tensor,
              quota: torch.Tensor) -> torch.Tensor:
    """score, eligible, block_of_row: [M]; quota: [NB]. The ``quota[b]`` best eligible rows of each block."""
    m = score.shape[0]
    score = torch.where(eligible, score, torch.full_like(score, float("-inf")))
    by_score = torch.argsort(score, descending=True, stable=True)  # [M]; ties -> lower row first
    by_block = by_score[torch.argsort(block_of_row[by_score], stable=True)]  # grouped by block, best first
    blocks = block_of_row[by_block]
    counts = torch.bincount(blocks, minlength=quota.shape[0])
    first = torch.cumsum(counts, 0) - counts  # [NB] start of each block's group
    rank = torch.arange(m, device=score.device) - first[blocks]
    take = (rank < quota[blocks]) & eligible[by_block]
    accept = torch.zeros(m, dtype=torch.bool, device=score.device)
    accept[by_block[take]] = True
    return accept


@AutoSampler.register("vanilla")
class QuotaSampler(Sampler):
    """Fill each block's quota of masks: the most confident ones, or random ones."""

    def decide(self, batch: Any, logits: torch.Tensor, reqs: list[Any], forbidden: torch.Tensor) -> list[Decision]:
        dev, cfg = logits.device, self.config
        tokens, conf = select_tokens(logits, forbidden, self.row_params(batch, reqs, dev), cfg.sampling.confidence)
        is_mask = batch.row_token.to(dev) == cfg.model.mask_token_id  # [M]
        score = conf
        if cfg.strategy.remasking == RemaskingKind.RANDOM:
            gens = [reqs[i].generator for i in batch.row_request.tolist()]
            score = torch.stack([torch.rand((), generator=g) for g in gens]).to(dev) if gens else conf
        accept = top_quota(score, is_mask, batch.row_block.to(dev), batch.block_quota.to(dev))
        rows = accept.nonzero().squeeze(1)
        picked = torch.stack([batch.row_request.to(dev)[rows].double(), batch.row_position.to(dev)[rows].double(),
                              tokens[rows].double(), conf[rows].double()], dim=1).tolist()
        out = [Decision() for _ in reqs]
        for r, pos, tok, c in picked:
            out[int(r)].fills.append((int(pos), int(tok), float(c)))
        return out
