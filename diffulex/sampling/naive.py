"""Naive (mask → token) sampling for pipelined block strategies (multi_bd, d2f)."""

from __future__ import annotations

from typing import Any

import torch

from ..registry import AutoSampler
from .accept import accept_masks
from .base import Decision, Sampler
from .select import select_tokens


@AutoSampler.register("naive")
class NaiveSampler(Sampler):
    """Fill masks above ``accept_threshold``; forced blocks take at least their best mask."""

    def decide(self, batch: Any, logits: torch.Tensor, reqs: list[Any], forbidden: torch.Tensor) -> list[Decision]:
        dev = logits.device
        cfg = self.config
        tokens, conf = select_tokens(logits, forbidden, self.row_params(batch, reqs, dev),
                                     cfg.sampling.confidence)  # [M], [M]
        is_mask = batch.row_token.to(dev) == cfg.model.mask_token_id  # [M]
        threshold = torch.full(batch.block_forced.shape, float(cfg.strategy.accept_threshold), device=dev)
        accept = accept_masks(conf, is_mask, batch.row_block.to(dev), batch.block_forced.to(dev), threshold)
        rows = accept.nonzero().squeeze(1)
        picked = torch.stack([batch.row_request.to(dev)[rows].double(), batch.row_position.to(dev)[rows].double(),
                              tokens[rows].double(), conf[rows].double()], dim=1).tolist()  # the one host sync
        out = [Decision() for _ in reqs]
        for r, pos, tok, c in picked:
            out[int(r)].fills.append((int(pos), int(tok), float(c)))
        return out
