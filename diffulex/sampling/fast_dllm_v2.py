"""Fast-dLLM v2 sampling: the current sub-block's masks, plus the AR seed of a new block.

Per sub-block (one per request and step): every mask whose confidence exceeds
``accept_threshold`` (strictly), and always at least the most confident one. A step plan
may name a *seed* position (``plan.seed``, the first position of a block that starts after
the prompt): it takes its token whatever its confidence, as the next-token prediction from
the last output of the finished block.
"""

from __future__ import annotations

from typing import Any

import torch

from ..registry import AutoSampler
from .accept import accept_masks
from .base import Decision, Sampler
from .select import select_tokens


def accept_with_seed(conf: torch.Tensor, is_mask: torch.Tensor, block_of_row: torch.Tensor,
                     forced: torch.Tensor, threshold: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """[M] bool: the threshold rule per block, plus every masked seed row (a seed counts as
    the block's forced pick)."""
    seeded = torch.zeros(forced.shape[0], dtype=torch.long, device=conf.device).scatter_reduce(
        0, block_of_row, (seed & is_mask).long(), reduce="amax").bool()  # [NB]
    return accept_masks(conf, is_mask, block_of_row, forced & ~seeded, threshold) | (seed & is_mask)


@AutoSampler.register("fast_dllm_v2")
class FastDLLMv2Sampler(Sampler):
    """Decisions of the Fast-dLLM v2 loop (one sub-block per request)."""

    def decide(self, batch: Any, logits: torch.Tensor, reqs: list[Any], forbidden: torch.Tensor) -> list[Decision]:
        dev, cfg = logits.device, self.config
        tokens, conf = select_tokens(logits, forbidden, self.row_params(batch, reqs, dev),
                                     cfg.sampling.confidence)  # [M], [M]
        row_req = batch.row_request.to(dev)
        is_mask = batch.row_token.to(dev) == cfg.model.mask_token_id  # [M]
        seed_pos = torch.tensor([getattr(r, "seed_position", -1) for r in reqs], dtype=torch.long, device=dev)
        seed = batch.row_position.to(dev) == seed_pos[row_req]  # [M]
        threshold = torch.full(batch.block_forced.shape, float(cfg.strategy.accept_threshold), device=dev)
        accept = accept_with_seed(conf, is_mask, batch.row_block.to(dev), batch.block_forced.to(dev), threshold, seed)
        force_all = batch.block_force_all.to(dev)[batch.row_block.to(dev)] & is_mask
        rows = (accept | force_all).nonzero().squeeze(1)
        picked = torch.stack([row_req[rows].double(), batch.row_position.to(dev)[rows].double(),
                              tokens[rows].double(), conf[rows].double()], dim=1).tolist()  # the one host sync
        out = [Decision() for _ in reqs]
        for r, pos, tok, c in picked:
            out[int(r)].fills.append((int(pos), int(tok), float(c)))
        return out
