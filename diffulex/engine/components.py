"""The classes one engine is built from, resolved from the registries.

Hydra experiments may replace any of them (``_target_``-style class paths); the defaults
come from the registries that ``diffulex.strategy`` and ``diffulex.sampling`` fill on import.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from ..config.enums import StrategyName

# Strategies whose decisions depend on the sampling mode use the mode's sampler;
# the others have one sampler of their own, registered under the strategy's name.
_MODE_SAMPLED = {StrategyName.MULTI_BD, StrategyName.D2F}


@dataclass
class EngineComponents:
    """Request, scheduler, KV-cache manager, model-runner and sampler classes."""

    request: Any
    scheduler: Any
    kv_cache_manager: Any
    model_runner: Any
    sampler: Any = None

    @classmethod
    def for_config(cls, config: Any) -> "EngineComponents":
        import diffulex.sampling  # noqa: F401  (registers the built-in samplers)
        import diffulex.strategy  # noqa: F401  (registers the built-in strategies)
        from ..registry import AutoKVCacheManager, AutoModelRunner, AutoReq, AutoSampler, AutoScheduler

        name = config.strategy.name
        sampler_name = config.sampling.mode.value if name in _MODE_SAMPLED else name.value
        sampler = AutoSampler.get(sampler_name) if sampler_name in AutoSampler else None
        return cls(request=AutoReq.get(name.value), scheduler=AutoScheduler.get(name.value),
                   kv_cache_manager=AutoKVCacheManager.get(name.value),
                   model_runner=AutoModelRunner.get(name.value), sampler=sampler)

    @classmethod
    def for_strategy(cls, strategy: str) -> "EngineComponents":
        """The registered components of a strategy name (naive sampling where it applies)."""
        from types import SimpleNamespace

        from ..config.enums import SamplingMode

        fake = SimpleNamespace(strategy=SimpleNamespace(name=StrategyName(strategy)),
                               sampling=SimpleNamespace(mode=SamplingMode.NAIVE))
        return cls.for_config(fake)

    def replace(self, **overrides: Any) -> "EngineComponents":
        """A copy with some classes swapped (None values keep the default)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        unknown = sorted(set(overrides) - set(values))
        if unknown:
            raise ValueError(f"unknown engine component(s) {unknown}; known: {sorted(values)}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return EngineComponents(**values)
