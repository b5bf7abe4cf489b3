"""Running a task through an engine: per-sample records and the run's metrics.

``evaluate(llm, task)`` feeds the task's samples to ``llm.generate`` in batches (a progress bar
over samples), scores each output with the task, and returns an :class:`EvalResult`: one record
per sample (prompt, output, extracted answer, reference, correct, tokens, TPF, NFE, latency) and
the metrics of ``diffulex.engine.metrics`` over the whole run (accuracy, TPF, mean NFE, decode and
end-to-end tok/s, the one-point AUP).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from diffulex.engine import metrics
from diffulex.tasks.arithmetic import Problem
from diffulex.tasks.base import Sample, Task

@dataclass
class EvalResult:
    """One evaluation run: per-sample records plus the batch totals the metrics are computed from."""

    task: dict[str, Any]
    samples: list[dict[str, Any]] = field(default_factory=list)
    trajectories: list[Any] = field(default_factory=list, repr=False)
    wall_time_s: float = 0.0
    prefill_time_s: float = 0.0
    decode_time_s: float = 0.0

    @property
    def n(self) -> int:
        return len(self.samples)

    @property
    def correct(self) -> int:
        return sum(s["correct"] for s in self.samples)

    @property
    def accuracy(self) -> float:
        return metrics.accuracy([s["correct"] for s in self.samples])

    @property
    def tpf(self) -> float:
        return metrics.tpf(self.trajectories)

    @property
    def mean_nfe(self) -> float:
        return metrics.mean_nfe(self.trajectories)

    @property
    def edits(self) -> int:
        """Token -> token rewrites over all answers."""
        return sum(s.num_edited for t in self.trajectories for s in t.steps)

    @property
    def edits_per_100(self) -> float:
        return 100.0 * self.edits / self.n if self.n else 0.0

    def metrics(self) -> dict[str, float]:
        """accuracy, TPF, mean NFE, decode / end-to-end tok/s, AUP of this one point, edits per 100."""
        generated = metrics.num_generated(self.trajectories)
        tpf = self.tpf
        return {"n": float(self.n), "correct": float(self.correct), "accuracy": self.accuracy, "tpf": tpf,
                "mean_nfe": self.mean_nfe, "decode_tps": metrics.decode_throughput(self.trajectories, self.prefill_time_s,
                                                                       self.decode_time_s),
                "e2e_tps": metrics.rate(generated, self.wall_time_s),
                "aup": metrics.aup([(tpf, 100.0 * self.accuracy)]) if tpf > 0 else 0.0,
                "edits_per_100": self.edits_per_100, "num_generated_tokens": float(generated),
                "wall_time_s": self.wall_time_s, "step_time_s": self.prefill_time_s + self.decode_time_s}

    def row(self) -> dict[str, float]:
        return {k: self.metrics()[k] for k in ("n", "accuracy", "tpf", "mean_nfe", "edits_per_100")}


def sampling_params(task: Task, **overrides: Any) -> Any:
    """Greedy ``SamplingParams`` with the task's ``max_tokens`` and stop strings; ``overrides`` win
    (a ``None`` value keeps the task's), and the task's stop strings are added to any given ones."""
    from diffulex import SamplingParams

    fields = {"temperature": 0.0, "max_tokens": task.max_tokens}
    fields.update({k: v for k, v in overrides.items() if v is not None})
    stop = list(overrides.get("stop") or [])
    fields["stop"] = stop + [s for s in task.stop if s not in stop]
    return SamplingParams(**fields)


def evaluate(llm: Any, task: Task, batch_size: int = 64, progress: bool = True,
             on_batch: Optional[Callable[[list[dict[str, Any]]], None]] = None, **sampling: Any) -> EvalResult:
    """Generate and score every sample of ``task``; ``sampling`` are ``SamplingParams`` fields.

    ``batch_size`` prompts go to one ``generate`` call (the engine batches them continuously up
    to its ``max_num_seqs``); ``on_batch`` sees each batch's sample records as they are scored.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}, expected an int >= 1")
    params = sampling_params(task, **sampling)
    samples = task.samples()
    result = EvalResult(task=task.describe())
    bar = _progress(len(samples), progress, task.name)
    try:
        for start in range(0, len(samples), batch_size):
            batch = samples[start:start + batch_size]
            out = llm.generate([s.prompt for s in batch], params, use_tqdm=False)
            records = [_record(task, s, t) for s, t in zip(batch, out.trajectories)]
            result.samples += records
            result.trajectories += out.trajectories
            result.wall_time_s += out.wall_time_s
            result.prefill_time_s += out.prefill_time_s
            result.decode_time_s += out.decode_time_s
            if on_batch is not None:
                on_batch(records)
            bar.update(len(batch))
            bar.set_postfix(accuracy=f"{result.accuracy:.3f}", tpf=f"{result.tpf:.2f}")
    finally:
        bar.close()
    return result


def _record(task: Task, sample: Sample, traj: Any) -> dict[str, Any]:
    return {"id": sample.id, "prompt": sample.prompt, "output": traj.text, "extracted": task.extract(traj.text),
            "reference": sample.reference, "correct": bool(task.is_correct(traj.text, sample)),
            "num_tokens": traj.num_generated, "nfe": traj.nfe, "tpf": traj.tpf, "latency_s": traj.e2e_s,
            "finish_reason": traj.finish_reason}


def _progress(total: int, enabled: bool, name: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"evaluate {name}", unit="sample", disable=not enabled)


class ProblemsTask(Task):
    """An explicit list of arithmetic ``Problem``s as a task (what ``score`` evaluates)."""

    name = "problems"

    def __init__(self, problems: Sequence[Problem], **kw: Any) -> None:
        super().__init__(**kw)
        self.problems = list(problems)

    def load(self) -> list[Sample]:
        from diffulex.tasks.synthetic import problem_sample

        return [problem_sample(p, i) for i, p in enumerate(self.problems)]

    def is_correct(self, output: str, sample: Sample) -> bool:
        from diffulex.tasks.arithmetic import is_correct

        return is_correct(output, sample.data["problem"])


def score(llm: Any, problems: Sequence[Problem], max_tokens: int = 32, **sampling: Any) -> EvalResult:
    """Evaluate a list of problems in one batch, greedy unless ``sampling`` says otherwise."""
    task = ProblemsTask(problems, max_tokens=max_tokens)
    return evaluate(llm, task, batch_size=max(1, len(problems)), progress=False, **sampling)
