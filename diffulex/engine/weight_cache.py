"""A cache of loaded model weights that outlives one engine (multirun jobs in one process).

Hydra's basic launcher runs every job of a sweep in one process. Jobs that differ only in
decoding settings use the same checkpoint, so the experiment layer hands the same
``WeightCache`` to each engine: a single-rank runner then reuses the loaded model instead
of reading the checkpoint again. The cache holds one model (the most recent key); a
different checkpoint, dtype, device, adapter or weight format replaces it, so memory stays bounded.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, Optional

import torch


class WeightCache:
    """Holds the most recently built model under its key; counts hits and loads."""

    def __init__(self) -> None:
        self._key: Optional[Hashable] = None
        self._model: Optional[torch.nn.Module] = None
        self.hits = 0
        self.loads = 0

    @staticmethod
    def key_for(config: Any, device: torch.device, dtype: torch.dtype) -> Hashable:
        """What decides the weights: checkpoint, family, dtype, device, adapter and weight format."""
        lora = config.lora
        q = getattr(config, "quantization", None)
        quant = (getattr(q.weights, "value", q.weights), tuple(q.weight_block_size), tuple(q.ignore)) if q else None
        return (config.model.path, config.family, str(dtype), str(device), bool(lora.enabled), lora.path,
                bool(lora.merge), quant)

    def get_or_build(self, key: Hashable, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
        if self._model is not None and key == self._key:
            self.hits += 1
            return self._model
        self.clear()
        self._model = build()
        self._key = key
        self.loads += 1
        return self._model

    def clear(self) -> None:
        """Drop the cached model (its memory is freed once no engine uses it)."""
        self._key, self._model = None, None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
