"""Every metric Diffulex reports, defined once: TPF, NFE, TTFT, throughputs, accuracy, AUP.

Plain functions over ``Trajectory`` lists (and, for accuracy and AUP, over scored samples and
(TPF, accuracy) points) so sweeps, evaluations, loggers and notebooks aggregate any subset the
same way ``GenerationOutputs`` does. A rate over zero time, or a mean over nothing, is 0.0
rather than an error, so a summary of an empty or instant run is still a table of numbers.

Definitions (``n_i``: tokens request ``i`` returned, ``len(token_ids)``; ``f_i``: its forward
passes, NFE; ``T``: seconds):

* ``tpf = Σ n_i / Σ f_i`` — tokens per forward counts *returned* tokens only: positions of the
  last block past ``max_tokens`` (or past a stop string) are decoded but never returned, so they
  do not count. A mean of per-request ratios is not used.
* ``mean_nfe = Σ f_i / N``; ``throughput = Σ n_i / T_wall`` (end-to-end tok/s: tokenizing,
  queueing and detokenizing included);
  ``decode_throughput = Σ n_i / (T_prefill + T_decode)`` (tok/s of the engine steps alone; the
  steps that prefill count too, because a dLLM's first forward already decodes a block);
  ``prefill_throughput = Σ prompt tokens / T_prefill``.
* ``accuracy = correct / scored`` (a fraction in [0, 1]).
* ``aup`` — accuracy under parallelism (d3LLM), see :func:`aup`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional, Sequence

if TYPE_CHECKING:
    from diffulex.engine.outputs import GenerationOutputs, Trajectory


def rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


def total_nfe(trajectories: Sequence["Trajectory"]) -> int:
    return sum(t.nfe for t in trajectories)


def mean_nfe(trajectories: Sequence["Trajectory"]) -> float:
    return total_nfe(trajectories) / len(trajectories) if trajectories else 0.0


def num_generated(trajectories: Sequence["Trajectory"]) -> int:
    """Tokens returned (``len(token_ids)`` summed): what TPF and the throughputs count."""
    return sum(t.num_generated for t in trajectories)


def num_prompt(trajectories: Sequence["Trajectory"]) -> int:
    return sum(len(t.prompt_token_ids) for t in trajectories)


def tpf(trajectories: Sequence["Trajectory"]) -> float:
    """Tokens per forward: returned tokens / forwards, ``Σ n_i / Σ f_i`` (not a mean of ratios)."""
    return rate(num_generated(trajectories), total_nfe(trajectories))


def decode_throughput(trajectories: Sequence["Trajectory"], prefill_time_s: float, decode_time_s: float) -> float:
    """Returned tokens per second of engine steps: ``Σ n_i / (T_prefill + T_decode)``."""
    return rate(num_generated(trajectories), prefill_time_s + decode_time_s)


def mean_ttft_s(trajectories: Sequence["Trajectory"]) -> float:
    """Mean time to first decided token over the requests that decided one."""
    ttfts = [t.ttft_s for t in trajectories if t.ttft_s is not None]
    return sum(ttfts) / len(ttfts) if ttfts else 0.0


def mean_e2e_s(trajectories: Sequence["Trajectory"]) -> float:
    return sum(t.e2e_s for t in trajectories) / len(trajectories) if trajectories else 0.0


def accuracy(correct: Sequence[bool]) -> float:
    """Fraction of scored samples that are correct: ``Σ correct_i / N`` (0.0 over nothing)."""
    return sum(bool(c) for c in correct) / len(correct) if correct else 0.0


def aup_weight(y: float, y_max: float, alpha: float = 3.0) -> float:
    """d3LLM's quality weight ``W(y) = min(exp(-α (1 - y / y_max)), 1)`` (accuracies in percent)."""
    return min(math.exp(-alpha * (1.0 - y / y_max)), 1.0) if y_max > 0 else 0.0


def aup(points: Sequence[tuple[float, float]], y_max: Optional[float] = None, alpha: float = 3.0,
        y_min_offset: float = 5.0) -> float:
    """Accuracy under parallelism (AUP) of (TPF, accuracy %) points of one method on one task.

    Source: d3LLM (Hao AI Lab, 2025–26), the ``get_aup`` of its leaderboard code. With the points
    sorted by TPF ``ρ_1 < … < ρ_m`` and accuracies ``y_i`` in percent:

        y_min = y_1 - y_min_offset            (points below y_min are dropped)
        AUP   = ρ_1 · y_1 + Σ_{i≥2} (ρ_i - ρ_{i-1}) · (y_i W(y_i) + y_{i-1} W(y_{i-1})) / 2

    i.e. the rectangle under the slowest point plus the trapezoid area of the quality-weighted
    curve, ``W`` from :func:`aup_weight` (α = 3 penalises accuracy below ``y_max``, the best
    accuracy of *all* methods compared on the task; default: the best of ``points``). One point
    gives ``ρ_1 · y_1``. d3LLM asserts when the curve drops by more than ``y_min_offset``; here
    such points are dropped instead, so a sweep over aggressive thresholds still has an AUP.
    Equal TPFs keep their order of appearance (a zero-width trapezoid adds nothing).
    """
    if not points:
        raise ValueError("aup needs at least one (tpf, accuracy) point")
    if any(r <= 0 for r, _ in points):
        raise ValueError(f"aup: every TPF must be > 0, got {[r for r, _ in points]}")
    if any(not 0 <= y <= 100 for _, y in points):
        raise ValueError(f"aup: accuracies are percentages in [0, 100], got {[y for _, y in points]}")
    pts = sorted(points, key=lambda p: p[0])
    y_max = max(y for _, y in pts) if y_max is None else y_max
    y_min = pts[0][1] - y_min_offset
    kept = [(r, y) for r, y in pts if y >= y_min]
    total = kept[0][0] * kept[0][1]
    for (r0, y0), (r1, y1) in zip(kept, kept[1:]):
        total += (r1 - r0) * (y1 * aup_weight(y1, y_max, alpha) + y0 * aup_weight(y0, y_max, alpha)) / 2
    return total


def summary(outputs: "GenerationOutputs") -> dict[str, float]:
    """One flat row of numbers per generate call, for logging and sweep tables."""
    ts = outputs.trajectories
    return {
        "num_requests": float(len(ts)),
        "num_steps": float(outputs.num_steps),
        "num_prompt_tokens": float(num_prompt(ts)),
        "num_generated_tokens": float(num_generated(ts)),
        "nfe": float(outputs.nfe),
        "mean_nfe": outputs.mean_nfe,
        "tpf": outputs.tpf,
        "ttft_s": outputs.ttft_s,
        "e2e_s": mean_e2e_s(ts),
        "wall_time_s": float(outputs.wall_time_s),
        "prefill_time_s": float(outputs.prefill_time_s),
        "decode_time_s": float(outputs.decode_time_s),
        "throughput": outputs.throughput,
        "decode_throughput": outputs.decode_throughput,
        "prefill_throughput": outputs.prefill_throughput,
    }
