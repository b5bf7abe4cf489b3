"""Faults a decode step detects in its inputs (as opposed to user mistakes, which are ValueErrors)."""

from __future__ import annotations


class NonFiniteLogits(RuntimeError):
    """A step's logits held NaN or inf for some requests (``indices``: positions in the step's
    request list). Raised from the step's one host transfer, so detecting it costs no extra sync."""

    def __init__(self, indices: list[int]) -> None:
        super().__init__(f"non-finite logits for the step's request(s) {indices}")
        self.indices = indices
