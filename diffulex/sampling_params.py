"""Per-request generation settings (``SamplingParams``), validated at construction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


def _bad(name: str, value: object, allowed: str) -> ValueError:
    return ValueError(f"SamplingParams.{name}={value!r} is invalid: allowed {allowed}")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass
class SamplingParams:
    """How one request is sampled and when it stops.

    ``max_tokens`` counts generated tokens only (never reserved mask slots); ``max_nfe``
    caps the forward passes the request takes part in.
    """

    temperature: float = 0.0  # 0: greedy, deterministic
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    max_tokens: int = 256
    max_nfe: Optional[int] = None
    ignore_eos: bool = False
    stop: list[str] = field(default_factory=list)
    seed: Optional[int] = None  # per-request generator seed (sampling at temperature > 0, random canvases)
    max_repetition_run: Optional[int] = None  # stop when one token repeats this many times in a row

    def __post_init__(self) -> None:
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not (0.0 <= t <= 100.0):
            raise _bad("temperature", t, "a number in [0, 100] (0 = greedy)")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise _bad("top_k", self.top_k, "an int >= 0 (0 = off)")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not 0.0 < self.top_p <= 1.0:
            raise _bad("top_p", self.top_p, "a number in (0, 1] (1 = off)")
        if not _is_int(self.max_tokens) or self.max_tokens < 1:
            raise _bad("max_tokens", self.max_tokens, "an int >= 1")
        for name in ("max_nfe", "max_repetition_run", "seed"):
            v = getattr(self, name)
            low = 0 if name == "seed" else 1
            if v is not None and (not _is_int(v) or v < low):
                raise _bad(name, v, f"None or an int >= {low}")
        if self.seed is not None and self.seed >= 1 << 64:  # torch.Generator takes 64-bit seeds
            raise _bad("seed", self.seed, "None or an int in [0, 2**64 - 1]")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if not isinstance(self.stop, (list, tuple)) or not all(isinstance(s, str) and s for s in self.stop):
            raise _bad("stop", self.stop, "a list of non-empty strings")
        self.stop = list(self.stop)
        if not isinstance(self.ignore_eos, bool):
            raise _bad("ignore_eos", self.ignore_eos, "True or False")
