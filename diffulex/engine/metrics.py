"""Aggregate metrics over trajectories: TPF, NFE, TTFT, throughputs.

Plain functions over ``Trajectory`` lists so sweeps and notebooks can aggregate any
subset (e.g. only finished requests) the same way ``GenerationOutputs`` does.
A rate over zero time, or a mean over nothing, is 0.0 rather than an error, so a summary
of an empty or instant run is still a table of numbers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from diffulex.engine.outputs import GenerationOutputs, Trajectory


def rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


def total_nfe(trajectories: Sequence["Trajectory"]) -> int:
    return sum(t.nfe for t in trajectories)


def mean_nfe(trajectories: Sequence["Trajectory"]) -> float:
    return total_nfe(trajectories) / len(trajectories) if trajectories else 0.0


def num_generated(trajectories: Sequence["Trajectory"]) -> int:
    return sum(t.num_generated for t in trajectories)


def num_prompt(trajectories: Sequence["Trajectory"]) -> int:
    return sum(len(t.prompt_token_ids) for t in trajectories)


def tpf(trajectories: Sequence["Trajectory"]) -> float:
    """Tokens decided per forward over the batch: all fills / all NFE (not a mean of ratios)."""
    return rate(sum(t.num_decided for t in trajectories), total_nfe(trajectories))


def mean_ttft_s(trajectories: Sequence["Trajectory"]) -> float:
    """Mean time to first decided token over the requests that decided one."""
    ttfts = [t.ttft_s for t in trajectories if t.ttft_s is not None]
    return sum(ttfts) / len(ttfts) if ttfts else 0.0


def mean_e2e_s(trajectories: Sequence["Trajectory"]) -> float:
    return sum(t.e2e_s for t in trajectories) / len(trajectories) if trajectories else 0.0


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
