"""Step observers: the engine emits records, observers consume them (loggers, progress bars).

The engine never imports a logging backend; Hydra experiments pass observers built from
``_target_`` nodes (e.g. the wandb logger in ``diffulex.integrations``).
"""

from __future__ import annotations

from typing import Any


class StepObserver:
    """Base observer: every hook is a no-op; subclasses override what they need."""

    def on_step(self, request_id: int, record: Any) -> None:
        """After each forward, once per request that took part (record: StepRecord)."""

    def on_request_finished(self, trajectory: Any) -> None:
        """When ``generate`` returns, once per trajectory (prompt order)."""

    def on_generate_end(self, outputs: Any) -> None:
        """When ``generate`` returns, with the whole GenerationOutputs."""

    def close(self) -> None:
        """When the engine exits."""


class NullObserver(StepObserver):
    """Observes nothing (the `logger=none` preset)."""
