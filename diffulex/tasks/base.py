"""What a task is: samples (prompt + reference), how an output is scored, how long to generate.

A :class:`Task` turns a data source into :class:`Sample`s and scores one output at a time;
``diffulex.tasks.evaluation.evaluate`` runs the samples through an engine. Tasks are plain
objects built from keyword arguments, so a Hydra ``task`` preset is ``{_target_: Class, ...}``
and a user's own task is any class with the same methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass(frozen=True)
class Sample:
    """One prompt of a task. ``reference`` is what the results show; ``data`` what the scorer needs."""

    id: str
    prompt: str
    reference: str
    data: dict[str, Any] = field(default_factory=dict, compare=False)


class Task:
    """Base class: subclasses set ``name`` and implement ``load`` and ``is_correct``.

    Args:
        limit: keep only the first ``limit`` samples (None: all).
        max_tokens: generation budget per sample when the run does not set one.
        stop: stop strings that end an answer (added to the run's own).
    """

    name = "task"
    default_max_tokens = 32
    default_stop: tuple[str, ...] = ()

    def __init__(self, limit: Optional[int] = None, max_tokens: Optional[int] = None,
                 stop: Optional[list[str]] = None) -> None:
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            raise ValueError(f"task {self.name}: limit={limit!r}, expected an int >= 1 or null (all samples)")
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise ValueError(f"task {self.name}: max_tokens={max_tokens!r}, expected an int >= 1 or null")
        self.limit = limit
        self.max_tokens = max_tokens or self.default_max_tokens
        self.stop = list(self.default_stop if stop is None else stop)
        self._samples: Optional[list[Sample]] = None

    def load(self) -> list[Sample]:
        raise NotImplementedError

    def samples(self) -> list[Sample]:
        """The task's samples (loaded once), cut to ``limit``."""
        if self._samples is None:
            loaded = self.load()
            if not loaded:
                raise ValueError(f"task {self.name} has no samples")
            self._samples = loaded[: self.limit] if self.limit else loaded
        return self._samples

    def extract(self, output: str) -> Optional[str]:
        """The answer read from an output (recorded next to the reference); default the stripped text."""
        return output.strip()

    def is_correct(self, output: str, sample: Sample) -> bool:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What identifies this task's run (for results.json and the wandb config)."""
        return {"name": self.name, "class": f"{type(self).__module__}.{type(self).__qualname__}",
                "limit": self.limit, "max_tokens": self.max_tokens, "stop": self.stop}
