"""Strategy ``dmax``: one block at a time, every step re-predicting the whole block, with
decided positions fed back as soft embeddings (see diffulex/sampling/dmax.py)."""

from __future__ import annotations

from typing import Any

import torch

from ..engine.block_scheduler import BlockScheduler
from ..engine.soft_inputs import SoftInputs
from .base import register_strategy
from .pipelined import BlockRequest


class DMaxRequest(BlockRequest):
    """A block request that keeps the soft-input descriptors of its decided positions."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.soft: dict[int, tuple[list[int], list[float]]] = {}

    def apply(self, decision: Any) -> None:
        super().apply(decision)
        self.soft = dict(decision.state.get("soft", {}))

    def commit_ready_blocks(self, eos_ids: set[int]) -> None:
        before = list(self.inflight)
        super().commit_ready_blocks(eos_ids)
        if self.inflight != before:
            self.soft = {}  # a committed block is fed back as hard tokens from now on

    @classmethod
    def pack_extras(cls, reqs: list[Any], plans: list[Any], bases: list[int]) -> dict:
        index, ids, probs = [], [], []
        for req, plan, base in zip(reqs, plans, bases):
            for pos, (top_ids, top_probs) in req.soft.items():
                if plan.start <= pos < plan.end and req.canvas[pos] != req.mask_id:
                    index.append(base + pos - plan.start)
                    ids.append(top_ids)
                    probs.append(top_probs)
        s = reqs[0].config.strategy
        k = s.token_merge_top_k
        return {"soft_inputs": SoftInputs(
            torch.tensor(index, dtype=torch.long), torch.tensor(ids, dtype=torch.long).reshape(-1, k),
            torch.tensor(probs, dtype=torch.float32).reshape(-1, k), reqs[0].mask_id,
            renormalize=s.token_merge_renormalize, weight=s.token_merge_weight)}


register_strategy("dmax", request=DMaxRequest, scheduler=BlockScheduler)
