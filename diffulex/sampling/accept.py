"""Which masked positions a step fills (naive, mask → token only).

Per block: every mask whose confidence exceeds the block's threshold (strictly); when the
block is *forced* and nothing passes, its single most confident mask (ties → lowest row).
A pure tensor function: one call decides for every block of the batch.
"""

from __future__ import annotations

import torch


def accept_masks(conf: torch.Tensor, is_mask: torch.Tensor, block_of_row: torch.Tensor,
                 forced: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """conf, is_mask, block_of_row: [M]; forced, threshold: [NB]. Returns accept: [M] bool."""
    num_blocks = forced.shape[0]
    above = is_mask & (conf > threshold[block_of_row])  # [M]
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
