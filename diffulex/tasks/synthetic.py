"""The trained tiny models' tasks as evaluation tasks: held-out arithmetic and ``mark``.

``ArithmeticTask(subtask="add2", n=200, seed=1)`` is ``held_out("add2", 200, seed=1)`` — the
samples ``docs/models.md`` reports accuracies on — scored by ``diffulex.tasks.is_correct``
(exact match of the first number; for ``mark`` any mask with the asked number of ones).
``to_jsonl_rows`` writes the same samples as the JSONL the lm-eval task files read.
"""

from __future__ import annotations

from typing import Any, Optional

from diffulex.tasks.arithmetic import SUBTASKS, Problem, held_out, is_correct
from diffulex.tasks.base import Sample, Task

# What the models were trained to answer in: a space, the answer, then EOS (no stop string).
ANSWER_TOKENS = 32


class ArithmeticTask(Task):
    """Held-out problems of one subtask (``add2``, ``sub2``, ``add3``, ``add4``, ``mul``, ``mark``...)."""

    default_max_tokens = ANSWER_TOKENS

    def __init__(self, subtask: str = "add2", n: int = 200, seed: int = 1, **kw: Any) -> None:
        if subtask not in SUBTASKS:
            raise ValueError(f"task.subtask={subtask!r} is unknown; choose one of {sorted(SUBTASKS)}")
        self.name = subtask
        super().__init__(**kw)
        self.subtask, self.n, self.seed = subtask, n, seed

    def load(self) -> list[Sample]:
        return [problem_sample(p, i) for i, p in enumerate(held_out(self.subtask, self.n, seed=self.seed))]

    def extract(self, output: str) -> Optional[str]:
        return extract_answer(output, self.subtask)

    def is_correct(self, output: str, sample: Sample) -> bool:
        return is_correct(output, sample.data["problem"])

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "subtask": self.subtask, "n": self.n, "seed": self.seed}


def problem_sample(p: Problem, index: int) -> Sample:
    return Sample(id=f"{p.subtask}-{index}", prompt=p.prompt, reference=p.reference, data={"problem": p})


def extract_answer(output: str, subtask: str) -> Optional[str]:
    """The part of an output the scorer reads: the first 0/1 run for ``mark``, else the first integer."""
    import re

    m = re.search(r"[01]+" if subtask == "mark" else r"-?\d+", output)
    return m.group() if m else None


def to_jsonl_rows(problems: list[Problem]) -> list[dict[str, Any]]:
    """JSONL rows (prompt, reference, subtask, value, items) that rebuild each Problem."""
    return [{"prompt": p.prompt, "reference": p.reference, "subtask": p.subtask, "value": p.value,
             "items": p.items} for p in problems]


def problem_from_row(row: dict[str, Any]) -> Problem:
    answer = row["reference"] if row["subtask"] == "mark" else ""
    return Problem(row["prompt"], int(row["value"]), row["subtask"], answer=answer, items=int(row.get("items", 0)))
