"""Scoring a task's problems through an engine: accuracy next to TPF, NFE and edits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from diffulex.tasks.arithmetic import Problem, is_correct


@dataclass
class TaskResult:
    """One run of a list of problems. ``tpf`` is all fills over all forwards (``metrics.tpf``)."""

    n: int
    correct: int
    tpf: float
    mean_nfe: float
    edits: int  # token -> token rewrites over all answers
    samples: list[dict] = field(default_factory=list)  # prompt, output, reference, correct, nfe, tpf

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    @property
    def edits_per_100(self) -> float:
        return 100.0 * self.edits / self.n if self.n else 0.0

    def row(self) -> dict[str, float]:
        return {"n": self.n, "accuracy": self.accuracy, "tpf": self.tpf, "mean_nfe": self.mean_nfe,
                "edits_per_100": self.edits_per_100}


def score(llm: Any, problems: Sequence[Problem], max_tokens: int = 32, **sampling: Any) -> TaskResult:
    """Generate every problem's prompt in one batch (greedy unless ``sampling`` says otherwise) and
    score each output with ``diffulex.tasks.is_correct``."""
    from diffulex import SamplingParams

    params = SamplingParams(**{"temperature": 0.0, "max_tokens": max_tokens, **sampling})
    out = llm.generate([p.prompt for p in problems], params, use_tqdm=False)
    samples, correct = [], 0
    for p, t in zip(problems, out.trajectories):
        ok = is_correct(t.text, p)
        correct += ok
        samples.append({"prompt": p.prompt, "output": t.text, "reference": p.reference, "correct": ok,
                        "nfe": t.nfe, "tpf": t.tpf})
    edits = sum(s.num_edited for t in out.trajectories for s in t.steps)
    return TaskResult(len(problems), correct, out.tpf, out.mean_nfe, edits, samples)
