"""Strategy ``vanilla``: the original LLaDA ``generate`` loop, the accuracy oracle.

No KV cache: every step is one forward over the whole canvas (prompt + ``max_tokens``
slots, future blocks included as masks), fully bidirectional. Blocks are aligned at the
prompt end; each block gets exactly ``steps_per_block`` steps and fills a fixed number of
masks per step (base + remainder to the first steps), chosen by confidence
(``remasking=low_confidence``) or at random. Decided tokens are never revised. On a shift
family (Dream) the loop is Dream's: one block of ``max_tokens`` with the timestep schedule
``linspace(1, 1e-3, steps + 1)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..config.families import FAMILIES
from ..engine.block_scheduler import BlockScheduler
from ..engine.plan import StepPlan
from ..engine.request import Request
from .base import register_strategy


def even_schedule(num_masks: int, steps: int) -> list[int]:
    """LLaDA's per-step transfer counts: base = masks // steps, remainder to the first steps."""
    base, rem = divmod(num_masks, steps)
    return [base + (1 if i < rem else 0) for i in range(steps)]


def dream_schedule(num_masks: int, steps: int, eps: float = 1e-3) -> list[int]:
    """Dream's counts: at step i, int(masks_left * (1 - t[i+1] / t[i])); the last step takes the rest.

    In float32 as Dream computes it: ``t = torch.linspace(1, eps, steps + 1)`` (float32) and the
    product with the (float32) mask count; float64 gives other counts for some (masks, steps),
    e.g. 332 instead of 333 in the first of 3 steps over 1,000 masks.
    """
    ts = torch.linspace(1.0, eps, steps + 1, dtype=torch.float32)  # [steps + 1]
    ratios = (1 - ts[1:] / ts[:-1]).tolist()  # float32 values, exactly representable as floats
    left, out = num_masks, []
    for i in range(steps):
        n = left if i == steps - 1 else int(np.float32(left) * np.float32(ratios[i]))
        out.append(n)
        left -= n
    return out


class VanillaRequest(Request):
    """Full-recompute decoding of one prompt with a fixed step schedule per block."""

    def __init__(self, req_id: int, prompt_token_ids: list[int], sampling_params: Any, config: Any) -> None:
        super().__init__(req_id, prompt_token_ids, sampling_params, config)
        s = config.strategy
        self.mask_id = config.model.mask_token_id
        self.shift = FAMILIES[config.family].shift
        gen = sampling_params.max_tokens
        self.block_size = gen if self.shift else s.block_size
        steps = s.steps_per_block if not self.shift else max(1, s.steps_per_block * -(-gen // s.block_size))
        self.canvas = list(prompt_token_ids) + [self.mask_id] * gen
        p = self.num_prompt_tokens
        self.spans = [(lo, min(lo + self.block_size, p + gen)) for lo in range(p, p + gen, self.block_size)]
        schedule = dream_schedule if self.shift else even_schedule
        self.schedules = [schedule(hi - lo, steps) for lo, hi in self.spans]
        self.block, self.block_step = 0, 0
        self.num_cached, self.stopped, self.output_token_ids = 0, False, None

    @property
    def inflight(self) -> list[int]:
        return [] if self.stopped else [self.block]

    def key_hi(self, position: int) -> int:
        return len(self.canvas)  # everything attends to everything

    @classmethod
    def key_bounds(cls, reqs: list["VanillaRequest"], positions: np.ndarray,
                   counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``key_lo`` (0) and ``key_hi`` (each request's whole canvas) of a packed batch. [N] each."""
        key_hi = np.repeat(np.array([len(r.canvas) for r in reqs], dtype=np.int64), counts)  # [N]
        return np.zeros_like(positions), key_hi

    def masks_in(self, b: int) -> int:
        lo, hi = self.spans[b]
        return self.canvas[lo:hi].count(self.mask_id)

    def step_token_bound(self) -> int:
        return len(self.canvas)

    committed_end = 0  # nothing is ever written to a KV cache

    def plan(self, config: Any) -> StepPlan:
        return StepPlan(start=0, end=len(self.canvas), write_start=0, write_end=0, spans=[self.spans[self.block]],
                        forced=[False], quota=[self.schedules[self.block][self.block_step]], blocks=[self.block],
                        shift=self.shift)

    def apply(self, decision: Any) -> None:
        for pos, tok, _ in decision.fills:
            self.canvas[pos] = tok

    def block_states(self, plan: StepPlan) -> list[dict]:
        lo, _ = self.spans[self.block]
        masks = self.masks_in(self.block)
        return [{"index": self.block, "start": lo, "masks": masks, "state": "active" if masks else "committing"}]

    def after_forward(self, plan: StepPlan) -> None:
        self.nfe += 1
        self.block_step += 1

    def commit_ready_blocks(self, eos_ids: set[int]) -> None:
        if self.block_step < len(self.schedules[self.block]):
            return
        hi = self.spans[self.block][1]
        generated = self.canvas[self.num_prompt_tokens:hi]
        if not self.sampling_params.ignore_eos and not eos_ids.isdisjoint(generated):
            for i, t in enumerate(generated):
                if t in eos_ids:
                    self._stop(generated[: i + 1], "eos")
                    return
        if self.block == len(self.spans) - 1:
            self._stop(generated, "length")
            return
        self.block, self.block_step = self.block + 1, 0

    def _stop(self, token_ids: list[int], reason: str) -> None:
        self.stopped, self.output_token_ids, self.finish_reason = True, list(token_ids), reason

    def decided_output(self) -> list[int]:
        out = []
        for t in self.canvas[self.num_prompt_tokens:]:
            if t == self.mask_id:
                break
            out.append(t)
        return out

    def preempt(self) -> None:
        self.num_cached = 0


register_strategy("vanilla", request=VanillaRequest, scheduler=BlockScheduler)
