"""GSM8K from the user's local copy (nothing is downloaded).

Data: the standard GSM8K JSONL (``openai/gsm8k``, config ``main``: ``test.jsonl``; one
``{"question": ..., "answer": "... #### 72"}`` per line). The prompt is lm-eval's
``"Question: {question}\\nAnswer:"``, optionally after ``num_fewshot`` solved examples from
``fewshot_path`` (e.g. ``train.jsonl``), each ``"Question: q\\nAnswer: a\\n\\n"``. Scoring follows
lm-eval's two filters: ``flexible`` (default) compares the *last* number of the output with the
reference, ``strict`` only accepts an answer written as ``#### N``.
"""

from __future__ import annotations

import re
from typing import Any, Optional

from diffulex.tasks.base import Sample, Task
from diffulex.tasks.files import read_jsonl
from diffulex.tasks.jsonl_task import last_number, same_number

FORMAT = ('GSM8K JSONL, one {"question": "...", "answer": "...#### <number>"} per line '
          "(openai/gsm8k, config main, split test)")
_STRICT = re.compile(r"#### (-?[0-9.,]+)")
MODES = ("flexible", "strict")


def gsm8k_reference(answer: str) -> str:
    """The number after ``####`` in a GSM8K answer, commas removed."""
    m = _STRICT.search(answer)
    if not m:
        raise ValueError(f"GSM8K answer has no '#### <number>' line: {answer[-80:]!r}")
    return m.group(1).replace(",", "").rstrip(".")


class GSM8K(Task):
    name = "gsm8k"
    default_max_tokens = 256
    default_stop = ("Question:", "</s>", "<|im_end|>")

    def __init__(self, path: Optional[str] = None, fewshot_path: Optional[str] = None, num_fewshot: int = 0,
                 mode: str = "flexible", **kw: Any) -> None:
        super().__init__(**kw)
        if mode not in MODES:
            raise ValueError(f"task.mode={mode!r} is unknown; choose one of {MODES}")
        if num_fewshot and not fewshot_path:
            raise ValueError(f"task.num_fewshot={num_fewshot} needs task.fewshot_path=<GSM8K train.jsonl>")
        self.path, self.fewshot_path, self.num_fewshot, self.mode = path, fewshot_path, num_fewshot, mode

    def _prefix(self) -> str:
        if not self.num_fewshot:
            return ""
        shots = read_jsonl(self.fewshot_path, self.name, FORMAT, required=("question", "answer"))[: self.num_fewshot]
        return "".join(f"Question: {s['question']}\nAnswer: {s['answer']}\n\n" for s in shots)

    def load(self) -> list[Sample]:
        rows = read_jsonl(self.path, self.name, FORMAT, required=("question", "answer"))
        prefix = self._prefix()
        out = []
        for i, r in enumerate(rows):
            try:
                ref = gsm8k_reference(r["answer"])
            except ValueError as e:
                raise ValueError(f"{self.path}: sample {i + 1}: {e}") from e
            out.append(Sample(id=str(i), prompt=f"{prefix}Question: {r['question']}\nAnswer:", reference=ref))
        return out

    def extract(self, output: str) -> Optional[str]:
        if self.mode == "strict":
            m = _STRICT.search(output)
            return m.group(1).replace(",", "").rstrip(".") if m else None
        return last_number(output)

    def is_correct(self, output: str, sample: Sample) -> bool:
        return same_number(self.extract(output), sample.reference)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "path": self.path, "num_fewshot": self.num_fewshot, "mode": self.mode}
