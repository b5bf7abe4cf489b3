"""Strategy ``fast_dllm_v2``: hierarchical block / sub-block decoding with the dual cache.

Blocks of ``block_size`` (32) tokens are aligned at absolute position 0 and attend
block-causally; the first block decoded holds the prompt tail (its prompt tokens fixed).
A block is split into ``buffer_size`` sub-blocks of ``sub_block_size`` tokens, decoded in
order: a step fills the current sub-block's masks whose confidence exceeds
``accept_threshold``, and always at least its best one. Logits are shifted (the row
predicting position p is the model output at p - 1).

Per block (``use_dual_cache=True``):

1. *Full pass.* One forward of the whole block (masks included), fused with the final
   tokens of the block just finished: it writes the finished block's final KV and the
   current block's KV, and gives logits for the first sub-block. The first position of a
   block that starts after the prompt is the AR seed: it takes the argmax predicted from
   the finished block's last output whatever its confidence.
2. *Sub-block refine.* Every later step forwards only the current sub-block plus the
   position before it (the row predicting its first position), with ``cache_only``: their
   new KV overwrites the cache first, and the keys are the cached positions ``[0, block
   end)`` — the committed prefix and the block's other sub-blocks as of the last write
   (the dual cache; stale by design). A position before the block is never rewritten.
3. When no mask is left the block commits; the next block's full pass stores its final KV.

With ``use_dual_cache=False`` every step is a full pass (the block recomputed against the
committed prefix), with the same sub-block gating.

A cache-only step needs the whole block's cache as keys: its plan sets ``context_len`` to the
block end, which the batch packer puts in ``context_lens`` (the shared runner, no subclass).
"""

from __future__ import annotations

import dataclasses
from typing import Any


from ..config.families import FAMILIES
from ..engine.block_scheduler import BlockScheduler
from ..engine.plan import StepPlan
from ..engine.request import Request
from .base import register_strategy
from .pipelined import BlockRequest


@dataclasses.dataclass
class SubBlockPlan(StepPlan):
    """A step plan whose logits rows are exactly the current sub-block's (``spans[0]``)."""

    seed: int = -1  # position filled by its argmax whatever its confidence (-1: none)

    def query_positions(self) -> range:
        lo, hi = self.spans[0]
        return range(max(lo, self.start + int(self.shift)), hi)


class FastDLLMv2Request(BlockRequest):
    """One block at a time, its sub-blocks decoded in order (interface of BlockRequest)."""

    def __init__(self, req_id: int, prompt_token_ids: list[int], sampling_params: Any, config: Any) -> None:
        Request.__init__(self, req_id, prompt_token_ids, sampling_params, config)
        s = config.strategy
        self.block_size: int = s.block_size
        self.buffer_size: int = 1  # one block in flight
        self.sub_block_size: int = s.block_size // s.buffer_size
        self.dual_cache: bool = bool(s.use_dual_cache)
        self.prefix_full = False
        self.mask_id: int = config.model.mask_token_id
        self.shift: bool = FAMILIES[config.family].shift
        self.canvas: list[int] = list(prompt_token_ids)
        self.inflight: list[int] = []
        self.refining: set[int] = set()
        self.block_steps: dict[int, int] = {}
        self.stability: dict[int, float] = {}
        self.num_cached = 0  # positions whose cached KV is final
        self.block_cached = False  # the current block's KV is in the cache (from a full pass)
        self.seed_position = -1  # this step's AR-seed position (see plan)
        self.stopped = False
        self.output_token_ids: list[int] | None = None
        self._open_block(self.num_prompt_tokens // self.block_size)

    @property
    def reads_below_cached(self) -> bool:  # the dual cache reads the block's own cached KV
        return not self.dual_cache

    def step_token_bound(self) -> int:
        return self.block_span(self.inflight[-1])[1] - self.num_cached + 1

    def current_sub_block(self) -> tuple[int, int]:
        """The first sub-block of the block in flight that still has a mask."""
        lo, hi = self.block_span(self.inflight[0])
        for a in range(lo, hi, self.sub_block_size):
            if self.mask_id in self.canvas[a:a + self.sub_block_size]:
                return a, a + self.sub_block_size
        return hi - self.sub_block_size, hi  # complete (commit_ready_blocks pops it)

    def plan(self, config: Any) -> StepPlan:
        b = self.inflight[0]
        lo, hi = self.block_span(b)
        sub = self.current_sub_block()
        common = dict(spans=[sub], forced=[True], quota=[-1], blocks=[b], shift=self.shift,
                      force_all=[self.must_finish(b, config)])
        if self.dual_cache and self.block_cached:
            # Refine the sub-block against the cache; re-feed the position before it for the
            # row predicting its first position (rewritten in place only inside the block).
            start = max(sub[0] - int(self.shift), 0)
            self.seed_position = -1
            return SubBlockPlan(start=start, end=sub[1], write_start=max(start, lo), write_end=sub[1],
                                cache_only=True, context_len=hi, **common)
        # Full pass: the block (and the final tokens not cached yet) written, block-causal.
        # A shift family re-feeds its last cached token: its output predicts the next position.
        start = self.num_cached - 1 if self.shift and self.num_cached > 0 else self.num_cached
        seed = lo if lo >= self.num_prompt_tokens and self.canvas[lo] == self.mask_id and self.shift else -1
        self.seed_position = seed  # read by the sampler
        return SubBlockPlan(start=start, end=hi, write_start=self.num_cached, write_end=hi, seed=seed, **common)

    def after_forward(self, plan: StepPlan) -> None:
        self.nfe += 1
        for b in plan.blocks:
            self.block_steps[b] = self.block_steps.get(b, 0) + 1
        if not plan.cache_only:
            # Everything before the block is final now; the block's KV is in the cache (not final).
            self.num_cached = max(self.num_cached, self.block_span(plan.blocks[0])[0])
            self.block_cached = True

    def commit_ready_blocks(self, eos_ids: set[int]) -> None:
        before = list(self.inflight)
        super().commit_ready_blocks(eos_ids)
        if self.inflight != before:
            self.block_cached = False  # a new block: its first step is a full pass

    def preempt(self) -> None:
        self.num_cached = 0
        self.block_cached = False


register_strategy("fast_dllm_v2", request=FastDLLMv2Request, scheduler=BlockScheduler)
