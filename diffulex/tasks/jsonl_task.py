"""Any local JSONL of prompts and references as a task: ``{"prompt": ..., "reference": ...}`` per line."""

from __future__ import annotations

import re
from typing import Any, Optional

from diffulex.tasks.base import Sample, Task
from diffulex.tasks.files import read_jsonl

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
MATCHES = ("number", "exact", "contains")
FORMAT = 'JSONL, one {"prompt": "...", "reference": "..."} object per line'


def last_number(text: str) -> Optional[str]:
    """The last number in ``text`` with thousands separators removed ("1,234.0" -> "1234.0")."""
    found = _NUMBER.findall(text)
    return found[-1].replace(",", "").rstrip(".") if found else None


def same_number(a: Optional[str], b: Optional[str]) -> bool:
    """Numeric equality of two number strings ("42" == "42.0"); False when either is missing."""
    if a is None or b is None:
        return False
    try:
        return float(a) == float(b)
    except ValueError:
        return a == b


class JsonlTask(Task):
    """Prompts and references from ``path``; ``match``: ``number`` (the first number of the output
    equals the reference's number), ``exact`` (stripped output == stripped reference) or
    ``contains`` (the stripped reference occurs in the output)."""

    def __init__(self, path: Optional[str] = None, match: str = "number", name: str = "jsonl", **kw: Any) -> None:
        self.name = name
        super().__init__(**kw)
        if match not in MATCHES:
            raise ValueError(f"task.match={match!r} is unknown; choose one of {MATCHES}")
        self.path, self.match = path, match

    def load(self) -> list[Sample]:
        rows = read_jsonl(self.path, self.name, FORMAT, required=("prompt", "reference"))
        return [Sample(id=str(r.get("id", i)), prompt=str(r["prompt"]), reference=str(r["reference"]))
                for i, r in enumerate(rows)]

    def extract(self, output: str) -> Optional[str]:
        if self.match == "number":
            m = _NUMBER.search(output)
            return m.group().replace(",", "") if m else None
        return output.strip()

    def is_correct(self, output: str, sample: Sample) -> bool:
        if self.match == "number":
            return same_number(self.extract(output), last_number(sample.reference))
        if self.match == "exact":
            return output.strip() == sample.reference.strip()
        return sample.reference.strip() in output

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "path": self.path, "match": self.match}
