"""The ``sampling`` config group: how logits become token decisions.

``naive`` only fills masks; ``edit`` (LLaDA2.1-style) also rewrites and re-masks
decided tokens. Per-request knobs (temperature, top-k/p, seed, max_tokens) live in
:class:`diffulex.SamplingParams`, not here.
"""

from __future__ import annotations

from dataclasses import dataclass

from .enums import ConfidenceKind, SamplingMode
from .errors import check_range, coerce_enum, config_error


@dataclass
class SamplingConfig:
    """Mask-to-token sampling: decided tokens are final."""

    mode: SamplingMode = SamplingMode.NAIVE
    # What confidence means when comparing against thresholds.
    confidence: ConfidenceKind = ConfidenceKind.PROBABILITY

    def validate(self) -> None:
        self.mode = coerce_enum(SamplingMode, "sampling.mode", self.mode)
        self.confidence = coerce_enum(ConfidenceKind, "sampling.confidence", self.confidence)
        expected = SamplingMode.EDIT if isinstance(self, EditSamplingConfig) else SamplingMode.NAIVE
        if self.mode != expected:
            raise config_error("sampling.mode", self.mode, repr(expected.value) + " for " + type(self).__name__,
                               "choose the matching sampling preset (sampling=naive or sampling=edit)")


@dataclass
class EditSamplingConfig(SamplingConfig):
    """Mask-to-token plus token-to-token editing (LLaDA2.1) and optional re-masking."""

    mode: SamplingMode = SamplingMode.EDIT
    # Rewrite a decided token when the new prediction differs with confidence above this.
    edit_threshold: float = 0.9
    # Turn a decided token back into a mask when its confidence falls below this (0: never).
    remask_threshold: float = 0.0
    # Extra steps a block may spend editing after its last mask was filled.
    max_post_edit_steps: int = 16
    # Subtracted from the logit of the previous position's token (anti-repetition; 0: off).
    penalty_lambda: float = 0.0

    def validate(self) -> None:
        super().validate()
        check_range("sampling.edit_threshold", self.edit_threshold, 0.0, 1.0)
        check_range("sampling.remask_threshold", self.remask_threshold, 0.0, 1.0)
        check_range("sampling.max_post_edit_steps", self.max_post_edit_steps, 0, None, integer=True)
        check_range("sampling.penalty_lambda", self.penalty_lambda, 0.0, None)


SAMPLING_CONFIGS: dict[SamplingMode, type[SamplingConfig]] = {
    SamplingMode.NAIVE: SamplingConfig,
    SamplingMode.EDIT: EditSamplingConfig,
}
