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

from ..engine.batch import host_to_device, rows_on
from ..registry import AutoSampler
from .accept import accept_masks
from .base import Decision, Sampler, StagedFills
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
        return self.launch(batch, logits, reqs, forbidden).result()

    def launch(self, batch: Any, logits: torch.Tensor, reqs: list[Any], forbidden: torch.Tensor) -> StagedFills:
        dev, cfg = logits.device, self.config
        db = rows_on(batch, dev)  # row / block tensors on the device, without a stream sync
        tokens, conf = select_tokens(logits, forbidden, self.row_params(batch, reqs, dev),
                                     cfg.sampling.confidence, kernels=self.kernels)  # [M], [M]
        is_mask = db.row_token == cfg.model.mask_token_id  # [M]
        seed_pos = host_to_device(torch.tensor([getattr(r, "seed_position", -1) for r in reqs], dtype=torch.long),
                                  dev)  # [R]
        seed = db.row_position == seed_pos[db.row_request]  # [M]
        threshold = torch.full(db.block_forced.shape, float(cfg.strategy.accept_threshold), device=dev)
        accept = accept_with_seed(conf, is_mask, db.row_block, db.block_forced, threshold, seed)
        force_all = db.block_force_all[db.row_block] & is_mask
        return StagedFills(len(reqs), accept | force_all, db.row_request, db.row_position, tokens, conf)
