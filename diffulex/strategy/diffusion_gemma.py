"""Strategy ``diffusion_gemma``: DiffusionGemma's native canvas loop (transformers' ``generate``).

The prompt is encoded causally (KV written). Then, canvas after canvas, ``C = block_size``
positions right after the encoded prefix start as uniformly random tokens (the request's
generator) and are denoised by the decoder role (bidirectional over the cache and the
canvas, never written) with self-conditioning on the previous step's probabilities; the
sampler (:mod:`diffulex.sampling.diffusion_gemma`) accepts the low-entropy prefix and
re-noises the rest. On convergence the *argmax* canvas is committed: its KV is written by
the next forward, fused with the next canvas's first step (encoder tokens and canvas
tokens share one forward, as the model's contract allows). Stop on EOS (output cut after
the first EOS of the committed canvas), ``max_tokens`` or ``max_nfe``.

RNG order per request equals transformers' on one sequence: ``randint`` for a new canvas,
then per step ``multinomial`` + ``randint`` (re-noising, drawn even on the last step).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..engine.block_scheduler import BlockScheduler
from ..engine.model_runner import resolve_dtype
from ..engine.plan import StepPlan
from ..engine.request import Request
from .base import register_strategy


def _device(config: Any) -> torch.device:
    p = config.parallel
    if getattr(p.device, "value", p.device) == "cuda":
        return torch.device("cuda", p.device_ids[0] if p.device_ids else 0)
    return torch.device("cpu")


class DiffusionGemmaRequest(Request):
    """One prompt decoded canvas by canvas (one canvas in flight, the block ``cstart // C``)."""


    @staticmethod
    def check_sampling_params(sp: Any) -> None:
        """The canvas loop sets its own temperature schedule; refuse knobs it would ignore."""
        if sp.temperature != 0.0 or sp.top_k != 0 or sp.top_p != 1.0:
            raise ValueError("diffusion_gemma samples with its own temperature schedule (strategy.t_min / "
                             "strategy.t_max); leave SamplingParams.temperature, top_k and top_p at their "
                             f"defaults (got temperature={sp.temperature}, top_k={sp.top_k}, top_p={sp.top_p})")

    def __init__(self, req_id: int, prompt_token_ids: list[int], sampling_params: Any, config: Any) -> None:
        super().__init__(req_id, prompt_token_ids, sampling_params, config)
        self.block_size: int = config.strategy.block_size
        self.history_len = max(1, config.strategy.stability_threshold)  # argmax canvases kept for stability
        self.vocab_size: int = config.checkpoint.vocab_size
        self.device = _device(config)
        self.sc_dtype = resolve_dtype(config.model.dtype, self.device)
        self.canvas: list[int] = list(prompt_token_ids)  # prompt + committed canvases + the current canvas
        self.cstart = self.num_prompt_tokens  # first position of the current canvas
        self.num_cached = 0
        self.denoise_steps = 0  # steps taken on the current canvas
        self.sc_probs: torch.Tensor | None = None  # [C, V] last step's probabilities (device)
        self.argmax_history: list[torch.Tensor] = []
        self.commit_pending = False
        self.stopped = False
        self.output_token_ids: list[int] | None = None
        self.generator: torch.Generator | None = None  # set by the engine
        self._device_gen: torch.Generator | None = None

    # -- randomness ------------------------------------------------------------------------
    def rng(self, device: torch.device) -> torch.Generator:
        """The request's generator on ``device`` (CPU: the engine's; else seeded once from it)."""
        if device.type == "cpu":
            return self.generator
        if self._device_gen is None:
            seed = self.sampling_params.seed
            if seed is None:
                seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
            self._device_gen = torch.Generator(device=device).manual_seed(seed)
        return self._device_gen

    def _new_canvas(self) -> None:
        gen = self.rng(self.device)
        noise = torch.randint(0, self.vocab_size, (1, self.block_size), generator=gen, device=self.device)[0]
        del self.canvas[self.cstart:]
        self.canvas.extend(noise.tolist())
        self.denoise_steps, self.sc_probs, self.argmax_history = 0, None, []

    # -- geometry ------------------------------------------------------------------------
    @property
    def target_end(self) -> int:
        return self.num_prompt_tokens + self.sampling_params.max_tokens

    @property
    def committed_end(self) -> int:
        return self.cstart

    @property
    def inflight(self) -> list[int]:
        return [] if self.stopped else [self.cstart // self.block_size]

    def masks_in(self, b: int) -> int:
        return 0 if self.commit_pending else self.block_size

    def step_token_bound(self) -> int:
        return self.cstart + self.block_size - self.num_cached

    def key_hi(self, position: int) -> int:
        """Encoder tokens are causal; canvas tokens see the prefix and the whole canvas."""
        return position + 1 if position < self.cstart else self.cstart + self.block_size

    @classmethod
    def key_bounds(cls, reqs: list["DiffusionGemmaRequest"], positions: np.ndarray,
                   counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``key_lo`` (0) and ``key_hi`` of a packed batch (see ``key_hi``). positions: [N]; counts: [R]."""
        cstart = np.repeat(np.array([r.cstart for r in reqs], dtype=np.int64), counts)  # [N]
        end = np.repeat(np.array([r.cstart + r.block_size for r in reqs], dtype=np.int64), counts)  # [N]
        return np.zeros_like(positions), np.where(positions < cstart, positions + 1, end)

    # -- one step ------------------------------------------------------------------------
    def plan(self, config: Any) -> StepPlan:
        if len(self.canvas) == self.cstart:  # the first canvas is drawn once the generator is set
            self._new_canvas()
        span = (self.cstart, self.cstart + self.block_size)
        return StepPlan(start=self.num_cached, end=span[1], write_start=self.num_cached, write_end=self.cstart,
                        spans=[span], forced=[False], quota=[-1], blocks=[self.cstart // self.block_size])

    @classmethod
    def pack_extras(cls, reqs: list[Any], plans: list[StepPlan], offsets: list[int]) -> dict:
        """``canvas_mask [N]`` and ``self_conditioning [N, V]`` (zero rows: encoder tokens, first steps)."""
        n = offsets[-1] + plans[-1].end - plans[-1].start
        mask = torch.zeros(n, dtype=torch.bool)
        for req, plan, off in zip(reqs, plans, offsets):
            mask[off + req.cstart - plan.start: off + plan.end - plan.start] = True
        extras: dict = {"canvas_mask": mask}
        with_sc = [(r, p, o) for r, p, o in zip(reqs, plans, offsets) if r.sc_probs is not None]
        if with_sc:
            ref = with_sc[0][0].sc_probs
            sc = torch.zeros(n, ref.shape[-1], dtype=ref.dtype, device=ref.device)
            for req, plan, off in with_sc:
                lo = off + req.cstart - plan.start
                sc[lo:lo + req.block_size] = req.sc_probs
            extras["self_conditioning"] = sc
        return extras

    def apply(self, decision: Any) -> None:
        """Write the next canvas (or, on convergence, the argmax canvas to commit)."""
        st = decision.state
        self.denoise_steps += 1
        self.argmax_history = (self.argmax_history + [st["argmax_tensor"]])[-self.history_len:]
        self.sc_probs = st["probs"]
        self.commit_pending = bool(st["converged"])
        new = st["argmax"] if self.commit_pending else st["canvas"]
        self.canvas[self.cstart:self.cstart + self.block_size] = new

    def block_states(self, plan: StepPlan) -> list[dict]:
        masks = self.masks_in(0)
        return [{"index": self.cstart // self.block_size, "start": self.cstart, "masks": masks,
                 "state": "committing" if self.commit_pending else "active", "denoise_steps": self.denoise_steps}]

    def after_forward(self, plan: StepPlan) -> None:
        self.num_cached = max(self.num_cached, plan.write_end)
        self.nfe += 1

    def commit_ready_blocks(self, eos_ids: set[int]) -> None:
        """Commit the argmax canvas once converged; stop on EOS or length, else draw the next canvas."""
        if not self.commit_pending:
            return
        self.commit_pending = False
        end = self.cstart + self.block_size
        generated = self.canvas[self.num_prompt_tokens:min(end, self.target_end)]
        self.cstart = end
        if not self.sampling_params.ignore_eos and not eos_ids.isdisjoint(generated):
            for i, t in enumerate(generated):
                if t in eos_ids:
                    self._stop(generated[: i + 1], "eos")
                    return
        if end >= self.target_end:
            self._stop(generated, "length")
            return
        self._new_canvas()

    def _stop(self, token_ids: list[int], reason: str) -> None:
        self.stopped, self.output_token_ids, self.finish_reason = True, list(token_ids), reason
        self.sc_probs, self.argmax_history = None, []

    def decided_output(self) -> list[int]:
        """Committed generated tokens (a canvas in flight is not decided)."""
        return self.canvas[self.num_prompt_tokens:min(self.cstart, self.target_end)]

    def preempt(self) -> None:
        """Lose the KV cache; the canvas, its step count and self-conditioning stay."""
        self.num_cached = 0


register_strategy("diffusion_gemma", request=DiffusionGemmaRequest, scheduler=BlockScheduler)
