"""Which masked positions a step fills (naive, mask → token only).

Per block: every mask whose confidence exceeds the block's threshold (strictly); when the
block is *forced* and nothing passes, its single most confident mask (ties → lowest row);
with ``min_fill``, a forced block takes its ``min_fill`` most confident masks or all that pass,
whichever is more (the official LLaDA2.0 rule; ``min_fill`` 1 is the rule above).
A pure tensor function: one call decides for every block of the batch.
"""

from __future__ import annotations

import torch

from .quota import top_quota


def accept_masks(conf: torch.Tensor, is_mask: torch.Tensor, block_of_row: torch.Tensor,
                 forced: torch.Tensor, threshold: torch.Tensor, min_fill: torch.Tensor | None = None) -> torch.Tensor:
    """conf, is_mask, block_of_row: [M]; forced, threshold, min_fill: [NB]. Returns accept: [M] bool."""
    num_blocks = forced.shape[0]
    above = is_mask & (conf > threshold[block_of_row])  # [M]
    if min_fill is not None:
        quota = torch.where(forced, min_fill, torch.zeros_like(min_fill))  # [NB]
        return above | top_quota(conf, is_mask, block_of_row, quota)
    any_above = torch.zeros(num_blocks, dtype=torch.long, device=conf.device).scatter_reduce(
        0, block_of_row, above.long(), reduce="amax").bool()  # [NB]
    score = torch.where(is_mask, conf, torch.full_like(conf, float("-inf")))  # [M]
    best = torch.full((num_blocks,), float("-inf"), device=conf.device, dtype=conf.dtype)
    best = best.scatter_reduce(0, block_of_row, score, reduce="amax")  # [NB]
    rows = torch.arange(conf.shape[0], device=conf.device)
    is_best = is_mask & (score == best[block_of_row])  # [M]
    first = torch.full((num_blocks,), conf.shape[0], device=conf.device, dtype=torch.long)
    first = first.scatter_reduce(0, block_of_row, torch.where(is_best, rows, conf.shape[0]), reduce="amin")
    force = forced & ~any_above  # [NB]
    return above | (force[block_of_row] & (rows == first[block_of_row]))
