"""DiffusionGemma's native canvas sampler: temperature schedule, entropy bound, re-noising.

One step per request, as transformers' ``DiffusionGemmaGenerationMixin._denoising_step``
(with ``LinearTemperatureScheduleLogitsProcessor``, ``EntropyBoundSampler`` and
``StableAndConfidentStoppingCriteria``) does it, for one canvas of ``C`` positions:

1. ``cur_step = S - k`` counts the steps *remaining* (k = steps already taken on this
   canvas, S = ``max_denoising_steps``); logits are divided by
   ``T = t_min + (t_max - t_min) * cur_step / S`` (t_max at the first step).
2. ``probs = softmax(processed)`` (fp32); one ``multinomial`` draw per position (the
   request's generator) and the ``argmax`` of the processed logits.
3. Entropy-bounded acceptance: positions sorted by entropy (ascending); the prefix with
   ``cumsum(entropy) - entropy <= entropy_bound`` takes its sampled token, every other
   position gets a fresh uniformly random token (one ``randint`` over the whole canvas).
4. Convergence: the argmax canvas equals each of the last ``stability_threshold`` argmax
   canvases and the mean entropy is ``< confidence_threshold``, or ``cur_step == 1``. The
   committed tokens are the argmax canvas.
5. The processed logits, cast to the model dtype, softmaxed in fp32, are the next step's
   self-conditioning input (kept on the device).

``SamplingParams.temperature``/``top_k``/``top_p`` are ignored, as transformers' generate
has no such knobs for this model: the schedule alone sets the temperature. The mask token is
not suppressed (transformers samples the full vocabulary).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..registry import AutoSampler
from .base import Decision, Sampler


def schedule_temperature(steps_taken: int, max_steps: int, t_min: float, t_max: float) -> torch.Tensor:
    """Temperature of the step after ``steps_taken`` steps: t_max first, t_min + (t_max-t_min)/S last.

    A float32 scalar tensor: transformers evaluates the schedule on an int32 ``cur_step``
    tensor, so the division happens in float32; the same arithmetic keeps logits bit-equal.
    """
    cur_step = torch.tensor(max_steps - steps_taken, dtype=torch.int32)
    return t_min + ((t_max - t_min) * (cur_step / max_steps))


def token_entropy(processed: torch.Tensor) -> torch.Tensor:
    """[C, V] processed logits -> [C] entropies (the Categorical formula transformers uses)."""
    return torch.distributions.Categorical(logits=processed, validate_args=False).entropy()


def entropy_accept(entropy: torch.Tensor, bound: float) -> torch.Tensor:
    """[C] bool: the lowest-entropy prefix with ``cumsum - current <= bound`` (never empty)."""
    sorted_ent, order = torch.sort(entropy, dim=-1, descending=False)
    keep = torch.cumsum(sorted_ent, dim=-1) - sorted_ent <= bound
    return torch.scatter(torch.zeros_like(keep), -1, order, keep)


def is_stable(history: list[torch.Tensor], argmax: torch.Tensor, threshold: int) -> bool:
    """The argmax canvas equals each of the last ``threshold`` ones (0: always stable)."""
    if threshold == 0:
        return True
    return len(history) >= threshold and all(torch.equal(h, argmax) for h in history[-threshold:])


@dataclass
class CanvasStep:
    """One denoising step of one canvas (tensors on the logits' device)."""

    canvas: torch.Tensor  # [C] next canvas: accepted samples, fresh random tokens elsewhere
    argmax: torch.Tensor  # [C]
    sample: torch.Tensor  # [C] multinomial draws
    accept: torch.Tensor  # [C] bool
    confidence: torch.Tensor  # [C] probability of the sampled token
    entropy: torch.Tensor  # [C]
    probs: torch.Tensor  # [C, V] self-conditioning input of the next step (model dtype)
    temperature: float


def denoise_step(logits: torch.Tensor, steps_taken: int, cfg: Any, gen: torch.Generator,
                 sc_dtype: torch.dtype = torch.float32) -> CanvasStep:
    """One step on ``logits: [C, V]`` (raw, float32); ``cfg`` has the strategy's knobs."""
    temp = schedule_temperature(steps_taken, cfg.max_denoising_steps, cfg.t_min, cfg.t_max)
    processed = logits / temp.to(logits.device)  # [C, V]
    probs = torch.softmax(processed, dim=-1, dtype=torch.float32)
    sample = torch.multinomial(probs, num_samples=1, generator=gen).squeeze(-1)  # [C]
    argmax = torch.argmax(processed, dim=-1)
    entropy = token_entropy(processed)
    accept = entropy_accept(entropy, cfg.entropy_bound)
    noise = torch.randint(0, logits.shape[-1], (1, logits.shape[0]), generator=gen, device=logits.device)[0]
    canvas = torch.where(accept, sample, noise)
    sc = torch.softmax(processed.to(sc_dtype).float(), dim=-1).to(sc_dtype)
    conf = probs.gather(-1, sample[:, None]).squeeze(-1)
    return CanvasStep(canvas, argmax, sample, accept, conf, entropy, sc, float(temp))


def converged(step: CanvasStep, history: list[torch.Tensor], steps_taken: int, cfg: Any) -> bool:
    """Commit after this step (``steps_taken`` counts it): stable and confident, or out of steps."""
    stable = is_stable(history, step.argmax, cfg.stability_threshold)
    confident = bool(step.entropy.mean() < cfg.confidence_threshold)
    return (stable and confident) or steps_taken >= cfg.max_denoising_steps


@AutoSampler.register("diffusion_gemma")
class DiffusionGemmaSampler(Sampler):
    """Per request: one :func:`denoise_step` over its canvas rows, then the commit rule."""

    def decide(self, batch: Any, logits: torch.Tensor, reqs: list[Any], forbidden: torch.Tensor) -> list[Decision]:
        cfg = self.config.strategy
        counts = torch.bincount(batch.row_request, minlength=len(reqs)).tolist()
        out, row = [], 0
        for req, n in zip(reqs, counts):
            rows = logits[row:row + n].float()
            positions = batch.row_position[row:row + n]
            row += n
            taken = req.denoise_steps
            step = denoise_step(rows, taken, cfg, req.rng(logits.device), req.sc_dtype)
            history = req.argmax_history
            done = converged(step, history, taken + 1, cfg)
            host = torch.stack([step.canvas, step.argmax, step.sample, step.accept.long()]).tolist()
            conf = step.confidence.tolist()
            pos = positions.tolist()
            d = Decision()
            d.fills = [(pos[i], host[2][i], conf[i]) for i in range(n) if host[3][i]]
            d.remasks = [pos[i] for i in range(n) if not host[3][i]]
            d.state = {"canvas": host[0], "argmax": host[1], "argmax_tensor": step.argmax, "probs": step.probs,
                       "converged": done, "temperature": step.temperature,
                       "mean_entropy": float(step.entropy.mean())}
            out.append(d)
        return out
