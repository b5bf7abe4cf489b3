"""Quality of generated text against references (generate.py's ``quality`` metric).

A numeric reference is matched like the ``jsonl`` task's ``number`` mode: the first number of
the output must equal it (``" 142"`` does not match ``"42"``); any other reference must occur in
the output. The fraction is ``diffulex.engine.metrics.accuracy`` over the prompts that have a
reference. For task-defined scoring use ``experiments/evaluate.py``.
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

from diffulex.engine import metrics
from diffulex.tasks.jsonl_task import same_number

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def matches_reference(text: str, reference: str) -> bool:
    """First number equal to a numeric reference; else the stripped reference occurs in the text."""
    ref = reference.strip()
    if _NUMBER.fullmatch(ref):
        first = _NUMBER.search(text.replace(",", ""))
        return same_number(first.group() if first else None, ref)
    return ref in text


def exact_match(texts: Sequence[str], references: Sequence[Optional[str]]) -> Optional[float]:
    """Fraction of prompts with a reference whose output matches it; None when none has one."""
    if len(texts) != len(references):
        raise ValueError(f"got {len(texts)} outputs for {len(references)} references")
    scored = [matches_reference(t, r) for t, r in zip(texts, references) if r is not None]
    return metrics.accuracy(scored) if scored else None
