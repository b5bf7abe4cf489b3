"""Engine keywords: the config options among them, and the names that are not options."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..config.aliases import is_config_key, near_miss
from ..sampling_params import SamplingParams


def split_engine_kwargs(kwargs: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(config keywords, ignored names): the seed ignores unrelated keywords; we name them.

    A near miss of a real option (``near_miss``: a config keyword, or a ``SamplingParams``
    field, which belongs in ``SamplingParams``) is a ValueError with "did you mean", not a
    silently ignored keyword.
    """
    kept = {k: v for k, v in kwargs.items() if is_config_key(k)}
    ignored = sorted(k for k in kwargs if k not in kept)
    sampling_fields = tuple(f.name for f in dataclasses.fields(SamplingParams))
    for name in ignored:
        guess = near_miss(name, sampling_fields)
        if guess in sampling_fields:
            raise ValueError(f"Diffulex: unknown keyword {name!r}; did you mean {guess!r}? It is a SamplingParams "
                             f"field: pass it to generate() as SamplingParams({guess}=...)")
        if guess is not None:
            raise ValueError(f"Diffulex: unknown keyword {name!r}; did you mean {guess!r}?")
    return kept, ignored
