"""Pack the scheduled requests of one step into a flat varlen batch.

Every request contributes the tokens [plan.start, plan.end) of its canvas. The result
carries one explicit :class:`AttentionMetadata` and, for the sampler, which logits row
belongs to which request, position and block (with the block's forcing and quota).
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
    row_token: torch.Tensor  # [M] the canvas token currently at that position
    row_block: torch.Tensor  # [M] global in-flight block index of the row (0..NB-1)
    block_forced: torch.Tensor  # [NB] bool
    block_quota: torch.Tensor  # [NB] long; -1 = threshold rule
    block_request: torch.Tensor  # [NB] index into the step's request list
    block_id: torch.Tensor  # [NB] the request's own block id
    block_force_all: torch.Tensor  # [NB] bool: fill every remaining mask this step
    row_prompt_len: torch.Tensor  # [M] prompt length of the row's request (positions below are fixed)
    row_prev_token: torch.Tensor  # [M] the canvas token at position - 1 (-1 at position 0)
    extras: dict  # strategy inputs for the model runner (e.g. soft_inputs), see ModelRunner.run


def _long(xs: list[int]) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.long)


def pack_batch(reqs: list[Any], plans: list[Any], page_size: int, kv_cache_manager: Any) -> StepBatch:
    """Build the batch for ``reqs`` (each with its ``plan``); page tables must cover write_end."""
    ids, pos, slots, key_hi, key_lo, cu, ctx = [], [], [], [], [], [0], []
    logits_idx, row_req, row_pos, row_tok, row_block, blk_forced, blk_quota, blk_req = ([] for _ in range(8))
    blk_id, blk_all, row_plen, row_prev = [], [], [], []
    for r, (req, plan) in enumerate(zip(reqs, plans)):
        base = len(ids)
        ids.extend(req.canvas[plan.start:plan.end])
        pos.extend(range(plan.start, plan.end))
        key_hi.extend(req.key_hi(p) for p in range(plan.start, plan.end))
        key_lo.extend(req.key_lo(p) if hasattr(req, "key_lo") else 0 for p in range(plan.start, plan.end))
        lo, hi = max(plan.write_start, plan.start), plan.write_end
        writes = kv_cache_manager.slots(req.page_table, lo, hi) if hi > lo else []
        slots.extend([-1] * (lo - plan.start) + writes + [-1] * (plan.end - max(hi, lo)))
        cu.append(len(ids))
        ctx.append(plan.start)
        first_block = len(blk_forced)
        blk_forced.extend(plan.forced)
        blk_quota.extend(plan.quota or [-1] * len(plan.spans))
        blk_req.extend([r] * len(plan.spans))
        blk_id.extend(plan.blocks or list(range(len(plan.spans))))
        blk_all.extend(plan.force_all or [False] * len(plan.spans))
        span_index = 0
        for p in plan.query_positions():
            while p >= plan.spans[span_index][1]:
                span_index += 1
            if p < plan.spans[span_index][0]:
                continue  # a gap between spans (not produced by the built-in strategies)
            logits_idx.append(base + p - int(plan.shift) - plan.start)
            row_req.append(r)
            row_pos.append(p)
            row_tok.append(req.canvas[p])
            row_block.append(first_block + span_index)
            row_plen.append(req.num_prompt_tokens)
            row_prev.append(req.canvas[p - 1] if p > 0 else -1)
    max_pages = max(1, max(len(req.page_table) for req in reqs))
    table = torch.full((len(reqs), max_pages), -1, dtype=torch.long)
    for r, req in enumerate(reqs):
        if req.page_table:
            table[r, : len(req.page_table)] = _long(req.page_table)
    meta = AttentionMetadata(
        cu_seqlens_q=_long(cu), positions=_long(pos), context_lens=_long(ctx), page_table=table,
        slot_mapping=_long(slots), key_lo=_long(key_lo), key_hi=_long(key_hi),
        cache_only=torch.tensor([bool(getattr(p, "cache_only", False)) for p in plans], dtype=torch.bool),
        logits_indices=_long(logits_idx), page_size=page_size)
    pack_extras = getattr(type(reqs[0]), "pack_extras", None)
    extras = pack_extras(reqs, plans, [cu[i] for i in range(len(reqs))]) if pack_extras else {}
    return StepBatch(_long(ids), _long(pos), meta, _long(row_req), _long(row_pos), _long(row_tok), _long(row_block),
                     torch.tensor(blk_forced, dtype=torch.bool), _long(blk_quota), _long(blk_req), _long(blk_id),
                     torch.tensor(blk_all, dtype=torch.bool), _long(row_plen), _long(row_prev), extras)
