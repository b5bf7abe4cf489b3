"""Pack the scheduled requests of one step into a flat varlen batch.

Every request contributes the tokens [plan.start, plan.end) of its canvas: first the
final tokens whose KV this forward writes ([start, write_end)), then its blocks in flight.
The result carries one explicit :class:`AttentionMetadata` and, for the sampler, which
logits row belongs to which request, position and block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..layers.attention_metadata import AttentionMetadata


@dataclass
class StepBatch:
    """Host-side tensors of one forward (moved to the device by the runner)."""

    input_ids: torch.Tensor  # [N]
    positions: torch.Tensor  # [N]
    meta: AttentionMetadata
    row_request: torch.Tensor  # [M] index into the step's request list
    row_position: torch.Tensor  # [M] absolute position predicted by the row
    row_block: torch.Tensor  # [M] global in-flight block index of the row (0..NB-1)
    block_forced: torch.Tensor  # [NB] bool
    block_request: torch.Tensor  # [NB] index into the step's request list


def pack_batch(reqs: list[Any], plans: list[Any], page_size: int, kv_cache_manager: Any) -> StepBatch:
    """Build the batch for ``reqs`` (each with its ``plan``); page tables must cover write_end."""
    ids, pos, slots, key_hi, cu, ctx = [], [], [], [], [0], []
    logits_idx, row_req, row_pos, row_block, blk_forced, blk_req = [], [], [], [], [], []
    for r, (req, plan) in enumerate(zip(reqs, plans)):
        base = len(ids)
        span = range(plan.start, plan.end)
        ids.extend(req.canvas[plan.start:plan.end])
        pos.extend(span)
        key_hi.extend(req.key_hi(p) for p in span)
        writes = kv_cache_manager.slots(req.page_table, plan.start, plan.write_end) if plan.write_end > plan.start else []
        slots.extend(writes + [-1] * (plan.end - max(plan.write_end, plan.start)))
        cu.append(len(ids))
        ctx.append(plan.start)
        first_block = len(blk_forced)
        for b, forced in zip(plan.blocks, plan.forced):
            blk_forced.append(forced)
            blk_req.append(r)
        block_start0 = plan.blocks[0] * req.block_size
        for p in range(plan.query_start, plan.end):
            logits_idx.append(base + p - plan.start)
            row_req.append(r)
            row_pos.append(p)
            row_block.append(first_block + (p - block_start0) // req.block_size)
    max_pages = max(1, max(len(req.page_table) for req in reqs))
    table = torch.full((len(reqs), max_pages), -1, dtype=torch.long)
    for r, req in enumerate(reqs):
        if req.page_table:
            table[r, : len(req.page_table)] = torch.tensor(req.page_table)
    long = lambda xs: torch.tensor(xs, dtype=torch.long)  # noqa: E731
    n = len(ids)
    meta = AttentionMetadata(
        cu_seqlens_q=long(cu), positions=long(pos), context_lens=long(ctx), page_table=table,
        slot_mapping=long(slots), key_lo=torch.zeros(n, dtype=torch.long), key_hi=long(key_hi),
        cache_only=torch.zeros(len(reqs), dtype=torch.bool), logits_indices=long(logits_idx), page_size=page_size)
    return StepBatch(long(ids), long(pos), meta, long(row_req), long(row_pos), long(row_block),
                     torch.tensor(blk_forced, dtype=torch.bool), long(blk_req))
