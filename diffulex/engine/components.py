"""The classes one engine is built from, resolved from the strategy registries.

Hydra experiments may replace any of them with ``_target_`` nodes; the defaults come from
the registries that ``diffulex.strategy`` fills when imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class EngineComponents:
    """Request, scheduler, KV-cache manager and model-runner classes of one strategy."""

    request: Any
    scheduler: Any
    kv_cache_manager: Any
    model_runner: Any

    @classmethod
    def for_strategy(cls, strategy: str) -> "EngineComponents":
        import diffulex.strategy  # noqa: F401  (registers the built-in strategies)
        from ..registry import AutoKVCacheManager, AutoModelRunner, AutoReq, AutoScheduler

        return cls(request=AutoReq.get(strategy), scheduler=AutoScheduler.get(strategy),
                   kv_cache_manager=AutoKVCacheManager.get(strategy), model_runner=AutoModelRunner.get(strategy))

    def replace(self, **overrides: Any) -> "EngineComponents":
        """A copy with some classes swapped (None values keep the default)."""
        values = {k: getattr(self, k) for k in ("request", "scheduler", "kv_cache_manager", "model_runner")}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return EngineComponents(**values)
