"""Registration helper: one call registers a strategy's four components."""

from __future__ import annotations

from typing import Any

from ..engine.kv_cache_manager import KVCacheManager
from ..engine.model_runner import ModelRunner
from ..engine.request import Request
from ..engine.scheduler import Scheduler
from ..registry import AutoKVCacheManager, AutoModelRunner, AutoReq, AutoScheduler


def register_strategy(name: str, request: Any = Request, scheduler: Any = Scheduler,
                      kv_cache_manager: Any = KVCacheManager, model_runner: Any = ModelRunner) -> None:
    """Register the components of strategy ``name`` (the shared ones unless overridden)."""
    AutoReq.register(name)(request)
    AutoScheduler.register(name)(scheduler)
    AutoKVCacheManager.register(name)(kv_cache_manager)
    AutoModelRunner.register(name)(model_runner)
