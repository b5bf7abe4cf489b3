"""Segment helpers for per-block decisions over the flat rows of a step (pure tensor code)."""

from __future__ import annotations

import torch


def block_any(flag: torch.Tensor, block_of_row: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """[NB] bool: does any row of the block have ``flag``."""
    out = torch.zeros(num_blocks, dtype=torch.long, device=flag.device)
    return out.scatter_reduce(0, block_of_row, flag.long(), reduce="amax").bool()


def block_all(flag: torch.Tensor, block_of_row: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """[NB] bool: do all rows of the block have ``flag`` (True for blocks without rows)."""
    return ~block_any(~flag, block_of_row, num_blocks)


def block_min(values: torch.Tensor, block_of_row: torch.Tensor, num_blocks: int, empty: int | float) -> torch.Tensor:
    """[NB] minimum of ``values`` per block (``empty`` for blocks without rows)."""
    out = torch.full((num_blocks,), empty, dtype=values.dtype, device=values.device)
    return out.scatter_reduce(0, block_of_row, values, reduce="amin")


def block_mean(values: torch.Tensor, weight: torch.Tensor, block_of_row: torch.Tensor,
               num_blocks: int) -> torch.Tensor:
    """[NB] weighted mean per block (1.0 for blocks with zero weight)."""
    num = torch.zeros(num_blocks, dtype=torch.float32, device=values.device).index_add(
        0, block_of_row, (values * weight).float())
    den = torch.zeros(num_blocks, dtype=torch.float32, device=values.device).index_add(0, block_of_row, weight.float())
    return torch.where(den > 0, num / den.clamp_min(1e-12), torch.ones_like(den))


def leftmost(flag: torch.Tensor, position: torch.Tensor, block_of_row: torch.Tensor,
             num_blocks: int) -> torch.Tensor:
    """[M] bool: the row with the smallest position among the flagged rows of its block."""
    big = torch.iinfo(torch.long).max
    first = torch.full((num_blocks,), big, dtype=torch.long, device=flag.device)
    first = first.scatter_reduce(0, block_of_row, torch.where(flag, position, big), reduce="amin")
    return flag & (position == first[block_of_row])
