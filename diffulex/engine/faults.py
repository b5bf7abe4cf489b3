"""Faults a decode step detects in its inputs (as opposed to user mistakes, which are ValueErrors)."""

from __future__ import annotations

from typing import Any


class NonFiniteLogits(RuntimeError):
    """A step's logits held NaN or inf for some requests (``indices``: positions in the step's
    request list). Raised from the step's one host transfer, so detecting it costs no extra sync."""

    def __init__(self, indices: list[int]) -> None:
        super().__init__(f"non-finite logits for the step's request(s) {indices}")
        self.indices = indices


def non_finite_error(reqs: list[Any], e: NonFiniteLogits) -> RuntimeError:
    """The user-facing error of a step whose logits were not finite (``reqs``: the step's requests)."""
    return RuntimeError(
        f"the model produced non-finite logits (NaN or inf) for request(s) "
        f"{[reqs[i].req_id for i in e.indices]}: check the checkpoint's weights for NaN / inf "
        "tensors and the dtype (float16 can overflow; try dtype='bfloat16' or 'float32'; FP8 experts on "
        "Triton multiply in float16 as well: quantization.weights=none rules that out)")


def check_progress(reqs: list[Any], plans: list[Any], decisions: list[Any]) -> None:
    """A request whose step had to fill a forced block and changed nothing would loop forever:
    an error instead (the sampler's rules guarantee progress unless its inputs are broken).
    Host-side, on the decisions the step already has: no device work."""
    stuck = []
    for req, plan, d in zip(reqs, plans, decisions):
        if d.fills or d.edits or d.remasks or not any(plan.forced):
            continue
        masks_of = getattr(req, "masks_in", None)
        if masks_of is not None and any(f and masks_of(b) > 0 for b, f in zip(plan.blocks, plan.forced)):
            stuck.append(req.req_id)
    if stuck:
        raise RuntimeError(f"request(s) {stuck} made no progress in a step that had to fill a block (a forced "
                           "block got no token): the sampler's inputs are broken, e.g. non-finite "
                           "confidences; stopping instead of looping")
