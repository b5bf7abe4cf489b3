"""``DiffulexEngine``: construction and shutdown along the seed's load path.

config → world size → worker ranks spawned → tokenizer → rank-0 model runner → scheduler.
Any failure during construction (in this process or in a worker) calls :meth:`exit`,
which leaves no process, port or process group behind, and re-raises the original error.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from ..config import Config
from ..config.aliases import is_config_key
from .components import EngineComponents
from .distributed import destroy_parallel_state, free_port, join_parallel_state
from .workers import WorkerGroup

logger = logging.getLogger("diffulex.engine")


def split_engine_kwargs(kwargs: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(config keywords, ignored names): the seed ignores unrelated keywords; we name them."""
    kept = {k: v for k, v in kwargs.items() if is_config_key(k)}
    return kept, sorted(k for k in kwargs if k not in kept)


class DiffulexEngine:
    """An inference engine for one checkpoint, strategy and topology. Use ``with`` or ``exit()``."""

    def __init__(self, model: Any, *, components: Optional[EngineComponents] = None, **kwargs: Any) -> None:
        self._closed = False
        self.workers: Optional[WorkerGroup] = None
        self.runner: Any = None
        self.scheduler: Any = None
        self.parallel: Any = None
        config_kwargs, ignored = split_engine_kwargs(kwargs)
        if ignored:
            logger.warning("Diffulex: ignoring keyword(s) that are not config options: %s", ", ".join(ignored))
        self.ignored_kwargs = ignored
        try:
            if isinstance(model, Config):
                if config_kwargs:
                    raise ValueError(f"Diffulex(config, ...): pass options inside the Config, not as keywords "
                                     f"({sorted(config_kwargs)})")
                self.config = model
            else:
                self.config = Config(model, **config_kwargs)
            self.components = components or EngineComponents.for_strategy(self.config.strategy.name.value)
            self._start()
        except BaseException:
            self.exit()
            raise

    def _start(self) -> None:
        config = self.config
        world = config.world_size
        if world > 1 and config.parallel.master_port == 0:
            config.parallel.master_port = free_port(config.parallel.master_addr)
        runner_cls = self.components.model_runner
        if world > 1:
            self.workers = WorkerGroup.start(runner_cls, config, world)
            # Every worker must reach the rendezvous before rank 0 joins it, so that a
            # worker that dies early is reported instead of hanging the rendezvous.
            self.workers.wait("started", timeout_s=config.parallel.timeout_s)
        self.parallel = join_parallel_state(config, 0)
        self.tokenizer = config.tokenizer
        self.runner = runner_cls(config, self.parallel)
        if self.workers is not None:
            self.workers.wait("ready")
        self.kv_cache_manager = self.components.kv_cache_manager(
            getattr(self.runner, "page_count", 0) or 1, config.cache.page_size, config.strategy.block_size,
            bool(config.cache.enable_prefix_caching))
        self.scheduler = self.components.scheduler(config, self.kv_cache_manager)

    def call_all(self, method: str, *args: Any) -> list[Any]:
        """Run ``runner.method(*args)`` on every rank; results in rank order."""
        if self.workers is None:
            return [getattr(self.runner, method)(*args)]
        self.workers.send(method, *args)
        try:
            mine = getattr(self.runner, method)(*args)
        finally:
            others = self.workers.wait("ok")
        return [mine, *others]

    @property
    def is_closed(self) -> bool:
        return self._closed

    def exit(self) -> None:
        """Shut down workers, free the cache and leave the process group. Idempotent."""
        if self._closed:
            return
        self._closed = True
        runner, self.runner = self.runner, None
        workers, self.workers = self.workers, None
        parallel, self.parallel = self.parallel, None
        try:
            if workers is not None:
                workers.close()
        finally:
            try:
                if runner is not None:
                    runner.exit()
            finally:
                if parallel is not None:
                    destroy_parallel_state(parallel)
        self.scheduler = None

    def __enter__(self) -> "DiffulexEngine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.exit()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            try:
                self.exit()
            except Exception:  # interpreter shutdown: modules may already be gone
                logger.debug("engine cleanup at garbage collection failed", exc_info=True)


def Diffulex(model: Any, **kwargs: Any) -> DiffulexEngine:
    """Build an engine: ``Diffulex("/path/to/ckpt", decoding_strategy="multi_bd", ...)``.

    Keywords naming a config field or a flat alias (see ``diffulex.config.aliases``) are
    applied; any other keyword is ignored with one warning that names it.
    """
    return DiffulexEngine(model, **kwargs)
