"""Quality of generated text against references: exact match of the reference substring."""

from __future__ import annotations

from typing import Optional, Sequence


def contains_reference(text: str, reference: str) -> bool:
    """True when the stripped reference occurs in the generated text."""
    return reference.strip() in text


def exact_match(texts: Sequence[str], references: Sequence[Optional[str]]) -> Optional[float]:
    """Fraction of prompts with a reference whose output contains it; None when none has one."""
    if len(texts) != len(references):
        raise ValueError(f"got {len(texts)} outputs for {len(references)} references")
    scored = [contains_reference(t, r) for t, r in zip(texts, references) if r is not None]
    return sum(scored) / len(scored) if scored else None
