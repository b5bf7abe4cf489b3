"""Build engine components and step observers from ``_target_`` config nodes.

``components`` (conf/components/): one entry per :class:`EngineComponents` field, each an
import path (``my_pkg.MySampler``), a ``_target_`` node, or null for the class the strategy
registers. A node may carry constructor arguments (``{_target_: my_pkg.MySampler, k: 2}``, then
``components.sampler.k=3`` on the command line): Hydra's ``instantiate`` with ``_partial_``
binds them, and the engine calls the result with its own arguments (a sampler gets the Config
first). Without arguments the class itself is passed.

``logger`` (conf/logger/): one ``_target_`` node instantiated with Hydra. The runner also
offers context values — ``run_config`` (normalized config dict), ``run_dir``,
``sweep_name`` and ``job_name`` — and passes each one that the class's ``__init__``
declares and the node leaves unset, so a custom logger opts into what it needs.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import fields
from typing import Any, Optional

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from diffulex.engine.components import EngineComponents

COMPONENT_NAMES = tuple(f.name for f in fields(EngineComponents))
OBSERVER_HOOKS = ("on_step", "on_request_finished", "on_generate_end", "close")


def _component(name: str, value: Any) -> Any:
    """The class (or the class with its configured arguments bound) for one components entry."""
    if value is None:
        return None
    if isinstance(value, str):
        return load_class(f"components.{name}", value)
    if isinstance(value, Mapping) and "_target_" in value:
        cls = load_class(f"components.{name}._target_", value["_target_"])
        if set(value) == {"_target_"}:
            return cls
        try:
            return instantiate(dict(value), _partial_=True, _convert_="all")
        except Exception as e:
            raise ValueError(f"components.{name}: cannot bind {sorted(set(value) - {'_target_'})} to "
                             f"{value['_target_']} ({e})") from e
    raise ValueError(f"components.{name}={value!r}: give an import path (my_pkg.MyClass), a node with "
                     "_target_ (and constructor arguments), or null for the default")


def load_class(where: str, path: str) -> type:
    """``get_class`` with an error that names the config key and the fix."""
    try:
        return get_class(path)
    except Exception as e:  # ImportError, AttributeError, ValueError from Hydra's locate
        raise ValueError(f"{where}={path!r} cannot be imported ({e}); check the module path and that its "
                         "package is on PYTHONPATH") from e


def build_components(node: Any, config: Any) -> EngineComponents:
    """The strategy's registered components with the configured classes swapped in."""
    entries = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})
    unknown = sorted(set(entries) - set(COMPONENT_NAMES))
    if unknown:
        raise ValueError(f"components has no entry {unknown}; its entries are {list(COMPONENT_NAMES)}")
    chosen = {name: _component(name, value) for name, value in entries.items()}
    return EngineComponents.for_config(config).replace(**chosen)


def build_observer(node: Any, **context: Any) -> Any:
    """Instantiate the ``logger`` node, adding the context values its class declares (see module doc)."""
    if node is None or "_target_" not in node:
        raise ValueError("logger needs a _target_ (e.g. logger=none or logger=wandb)")
    cls = load_class("logger._target_", node["_target_"])
    params = inspect.signature(cls.__init__).parameters
    extra = {k: v for k, v in context.items() if k in params and node.get(k) is None}
    # The context goes in after Hydra: instantiate would build any ``_target_`` node inside it
    # (the run config holds the task's).
    observer = instantiate(node, _convert_="all", _partial_=True)(**extra)
    missing = [h for h in OBSERVER_HOOKS if not callable(getattr(observer, h, None))]
    if missing:
        raise ValueError(f"logger._target_={node['_target_']!r} lacks the observer hook(s) {missing}; subclass "
                         "diffulex.engine.observers.StepObserver")
    return observer
