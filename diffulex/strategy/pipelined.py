"""Block-diffusion request state for ``multi_bd`` and ``d2f`` (blocks pipelined in a buffer).

Blocks of B tokens are aligned at absolute position 0; the first block decoded is the one
holding the prompt's tail (its prompt tokens fixed). Up to ``buffer_size`` consecutive
blocks are in flight; a block whose positions are all decided commits in order, and its
KV is written by the next forward from its *final* tokens (fused with that forward's
decoding). ``multi_bd`` is block-causal everywhere (the prompt tail is recomputed with its
block); ``d2f`` attends the prompt bidirectionally, so the whole prompt is written once at
prefill. See docs/strategies.md for the exact rules.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config.families import FAMILIES
from ..engine.plan import StepPlan
from ..engine.request import Request


def official_fill_schedule(config: Any, max_tokens: int) -> list[int]:
    """Per step of a block, the masks a forced block takes at least ([]: 1 per step).

    The official LLaDA2.0 ``generate`` runs ``steps = min(steps, gen_length // minimal_topk)``
    steps per block (steps = block length, minimal_topk = 1 by default) and transfers
    ``block // steps`` tokens per step, one more in the first ``block % steps`` steps. With
    ``max_tokens`` below the block size that forces several tokens per step (block 32,
    ``max_tokens`` 20: 2 in each of the first 12 steps). ``multi_bd`` on the LLaDA2 family
    follows it, so its greedy output equals the official one at every generation length;
    at ``max_tokens >= block_size`` it is one token per step, the rule of every other case.
    """
    block = config.strategy.block_size
    if (not FAMILIES[config.family].short_generation_schedule or config.strategy.name.value != "multi_bd"
            or not 0 < max_tokens < block):
        return []
    base, rem = divmod(block, max_tokens)
    return [base + (1 if i < rem else 0) for i in range(max_tokens)]


class BlockRequest(Request):
    """A request decoded block by block with a buffer of blocks in flight."""

    reads_below_cached = True  # attention reads the cache below num_cached only (block-causal)

    def __init__(self, req_id: int, prompt_token_ids: list[int], sampling_params: Any, config: Any) -> None:
        super().__init__(req_id, prompt_token_ids, sampling_params, config)
        s = config.strategy
        self.block_size: int = s.block_size
        self.buffer_size: int = s.buffer_size
        self.prefix_full: bool = bool(s.multi_block_prefix_full)
        self.mask_id: int = config.model.mask_token_id
        self.shift: bool = FAMILIES[config.family].shift
        self.canvas: list[int] = list(prompt_token_ids)
        self.inflight: list[int] = []
        self.refining: set[int] = set()  # blocks without masks that the sampler keeps open (edits)
        self.block_steps: dict[int, int] = {}  # forwards each block took part in
        self.stability: dict[int, float] = {}  # fraction of decided tokens unchanged in the last step
        self.num_cached = 0
        self.stopped = False
        self.output_token_ids: list[int] | None = None
        self.fill_schedule = official_fill_schedule(config, sampling_params.max_tokens)
        self._open_block(self.num_prompt_tokens // self.block_size)

    # -- geometry -------------------------------------------------------------------
    @property
    def target_end(self) -> int:
        """Last position (exclusive) the request must generate."""
        return self.num_prompt_tokens + self.sampling_params.max_tokens

    def block_span(self, b: int) -> tuple[int, int]:
        return b * self.block_size, (b + 1) * self.block_size

    def masks_in(self, b: int) -> int:
        lo, hi = self.block_span(b)
        return self.canvas[lo:hi].count(self.mask_id)

    def decided_fraction(self, b: int) -> float:
        return 1.0 - self.masks_in(b) / self.block_size

    @property
    def committed_end(self) -> int:
        """Positions before this are final: full blocks before the first in flight (d2f: the prompt too)."""
        first = self.block_span(self.inflight[0])[0] if self.inflight else len(self.canvas)
        return max(first, self.num_prompt_tokens) if self.prefix_full else first

    def step_token_bound(self) -> int:
        """Tokens the next step may feed at most (the window plus one new block, plus a shift token)."""
        last = self.inflight[-1] if self.inflight else 0
        return (last + 2) * self.block_size - self.num_cached + 1

    def key_hi(self, position: int) -> int:
        """Exclusive bound of the key positions a query at ``position`` attends to."""
        if self.prefix_full and position < self.num_prompt_tokens:
            return self.num_prompt_tokens
        return (position // self.block_size + 1) * self.block_size

    @classmethod
    def key_bounds(cls, reqs: list["BlockRequest"], positions: np.ndarray,
                   counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``key_lo`` (0) and ``key_hi`` of every token of a packed batch (``pack_batch``), as arrays.

        positions: [N] int64, request after request; counts: [R] tokens per request. Block-causal
        with the strategy's block size (one per batch); a prefix-full prompt sees the whole prompt.
        """
        block = reqs[0].block_size
        key_hi = (positions // block + 1) * block  # [N]
        full = [r.num_prompt_tokens if r.prefix_full else 0 for r in reqs]  # [R]; 0: no prompt rule
        if any(full):
            prompt_end = np.repeat(np.array(full, dtype=np.int64), counts)  # [N]
            key_hi = np.where(positions < prompt_end, prompt_end, key_hi)
        return np.zeros_like(positions), key_hi

    def _open_block(self, b: int) -> None:
        lo, hi = self.block_span(b)
        self.canvas.extend([self.mask_id] * (hi - len(self.canvas)))
        self.inflight.append(b)

    # -- one step ----------------------------------------------------------------------
    def plan(self, config: Any) -> StepPlan:
        """Add a block if the pipeline rule allows, then describe this step's forward."""
        s = config.strategy
        last = self.inflight[-1]
        if (len(self.inflight) < self.buffer_size and not self.stopped
                and self.block_span(last)[1] < self.target_end
                and self.decided_fraction(last) >= s.add_block_threshold
                and self.stability.get(last, 1.0) >= s.token_stability_threshold):
            self._open_block(last + 1)
        fractions = [self.decided_fraction(b) for b in self.inflight]
        forced = [i == 0 or fractions[i - 1] >= s.semi_complete_threshold for i in range(len(self.inflight))]
        spans = [self.block_span(b) for b in self.inflight]
        # A shift family re-feeds its last cached token: its output predicts the next position.
        start = self.num_cached - 1 if self.shift and self.num_cached > 0 else self.num_cached
        return StepPlan(start=start, end=spans[-1][1], write_start=self.num_cached, write_end=self.committed_end,
                        spans=spans, forced=forced, quota=[-1] * len(spans), blocks=list(self.inflight),
                        shift=self.shift, force_all=[self.must_finish(b, config) for b in self.inflight],
                        min_fill=[self.min_fill(b) for b in self.inflight])

    def min_fill(self, b: int) -> int:
        """Masks block ``b`` takes at least this step when forced: 1, or the official LLaDA2.0
        count of its step (see :func:`official_fill_schedule`)."""
        step = self.block_steps.get(b, 0)
        return self.fill_schedule[step] if step < len(self.fill_schedule) else 1

    def must_finish(self, b: int, config: Any) -> bool:
        """True when block ``b`` has used its step budget and must fill every mask now."""
        limit = getattr(config.strategy, "max_steps_per_block", None)
        if limit is None and hasattr(config.sampling, "max_post_edit_steps"):
            limit = self.block_size + config.sampling.max_post_edit_steps
        return limit is not None and self.block_steps.get(b, 0) + 1 >= limit

    def apply(self, decision: Any) -> None:
        """Write fills and edits into the canvas; re-masked positions become masks again."""
        for pos, tok, _ in decision.fills:
            self.canvas[pos] = tok
        for pos, _old, new, _ in decision.edits:
            self.canvas[pos] = new
        for pos in decision.remasks:
            self.canvas[pos] = self.mask_id
        self.refining = set(decision.state.get("refining", ()))
        self.stability.update(decision.state.get("stability", {}))

    def block_states(self, plan: StepPlan) -> list[dict]:
        """One summary per block of this step (for step records)."""
        out = []
        for b in plan.blocks:
            masks = self.masks_in(b)
            out.append({"index": b, "start": b * self.block_size, "masks": masks,
                        "state": "active" if masks or b in self.refining else "committing"})
        return out

    def after_forward(self, plan: StepPlan) -> None:
        """The forward wrote the KV of [write_start, write_end)."""
        self.num_cached = max(self.num_cached, plan.write_end)
        self.nfe += 1
        for b in plan.blocks:
            self.block_steps[b] = self.block_steps.get(b, 0) + 1

    def commit_ready_blocks(self, eos_ids: set[int]) -> None:
        """Commit leading blocks that have no mask left; stop on EOS or length."""
        while self.inflight and self.masks_in(self.inflight[0]) == 0 and self.inflight[0] not in self.refining:
            b = self.inflight.pop(0)
            block_start, block_end = self.block_span(b)
            # Only this block's generated tokens: the blocks before it were checked when committed.
            lo, hi = max(block_start, self.num_prompt_tokens), min(block_end, self.target_end)
            if not self.sampling_params.ignore_eos and not eos_ids.isdisjoint(self.canvas[lo:hi]):  # C speed first
                for i in range(lo, hi):
                    if self.canvas[i] in eos_ids:
                        self._stop(self.canvas[self.num_prompt_tokens:i + 1], "eos")
                        return
            if block_end >= self.target_end:
                self._stop(self.canvas[self.num_prompt_tokens:hi], "length")
                return
            if not self.inflight:
                self._open_block(b + 1)

    def _stop(self, token_ids: list[int], reason: str) -> None:
        self.stopped = True
        self.output_token_ids = list(token_ids)
        self.finish_reason = reason

    def decided_output(self) -> list[int]:
        """Generated tokens decided so far, up to the first undecided position."""
        out = self.canvas[self.num_prompt_tokens:self.target_end]
        if self.mask_id in out:
            del out[out.index(self.mask_id):]
        return out

    def preempt(self) -> None:
        """Lose the KV cache; the canvas and blocks stay, so decoding resumes exactly."""
        self.num_cached = 0
