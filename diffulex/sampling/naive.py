"""Naive (mask → token) sampling for pipelined block strategies (multi_bd, d2f)."""

from __future__ import annotations

from typing import Any

import torch

from ..engine.batch import rows_on
from ..registry import AutoSampler
from .accept import accept_masks
from .base import Decision, Sampler, StagedFills
from .select import select_tokens


@AutoSampler.register("naive")
class NaiveSampler(Sampler):
    """Fill masks above ``accept_threshold``; forced blocks take at least their best mask."""

    def decide(self, batch: Any, logits: torch.Tensor, reqs: list[Any], forbidden: torch.Tensor) -> list[Decision]:
        return self.launch(batch, logits, reqs, forbidden).result()

    def launch(self, batch: Any, logits: torch.Tensor, reqs: list[Any], forbidden: torch.Tensor) -> StagedFills:
        dev = logits.device
        cfg = self.config
        db = rows_on(batch, dev)  # row / block tensors on the device, without a stream sync
        tokens, conf = select_tokens(logits, forbidden, self.row_params(batch, reqs, dev),
                                     cfg.sampling.confidence, kernels=self.kernels)  # [M], [M]
        is_mask = db.row_token == cfg.model.mask_token_id  # [M]
        threshold = torch.full(db.block_forced.shape, float(cfg.strategy.accept_threshold), device=dev)
        min_fill = db.block_min_fill if getattr(batch, "multi_fill", False) else None
        accept = accept_masks(conf, is_mask, db.row_block, db.block_forced, threshold, min_fill)  # [M]
        return StagedFills(len(reqs), accept, db.row_request, db.row_position, tokens, conf)  # read: the one sync
