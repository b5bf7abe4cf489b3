"""Hydra schemas for the config tree, and the one function that turns a composed config into a Config.

The experiment config (``conf/config.yaml``) keeps the engine groups at the top level, so
overrides read ``strategy=dmax model=llada2_mini strategy.accept_threshold=0.8
model_root=/x``. Next to them it has three experiment-only nodes: ``logger`` (a group of
``_target_`` observer presets), ``components`` (engine classes to swap in) and
``experiment`` (prompts, per-request sampling parameters, objective, output). Its schema, :class:`ExperimentConfig`, is :class:`~diffulex.config.Config`
plus those nodes (and ``task``, the evaluation task of ``conf/evaluate.yaml``), so unknown keys and wrongly typed values fail while composing.
:func:`config_from_hydra` keeps only the Config fields and builds the Config through
``OmegaConf.to_object``, which runs ``Config.__init__`` and therefore every rule.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Dict

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from diffulex.config import (CacheConfig, Config, EditSamplingConfig, LoRAConfig, ModelConfig,
                             ParallelConfig, QuantizationConfig, RuntimeConfig, SamplingConfig,
                             STRATEGY_CONFIGS)

# Config's own fields: the engine part of a composed experiment config.
CONFIG_KEYS: tuple[str, ...] = tuple(f.name for f in fields(Config))


@dataclass(init=False)
class ExperimentConfig(Config):
    """Schema of ``conf/config.yaml``: the Config fields plus the experiment-only nodes.

    Only a schema for composition: it is never instantiated (``config_from_hydra`` builds
    the plain :class:`Config` from the Config fields).
    """

    # The step observer, a ``_target_`` node (conf/logger/*.yaml).
    logger: Any = None
    # Engine component classes by name; null keeps the registered one (conf/components/).
    components: Dict[str, Any] = field(default_factory=dict)
    # What to run and where to put the results: prompts, sampling_params, output_dir.
    experiment: Dict[str, Any] = field(default_factory=dict)
    # The evaluation task, a ``_target_`` node (conf/task/*.yaml; only conf/evaluate.yaml sets it).
    task: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("ExperimentConfig is a composition schema only; build the engine config "
                        "with diffulex.integrations.hydra_store.config_from_hydra(cfg)")


# Group schemas live under ``hydra/schema/<group>`` (a preset names its schema first:
# ``- /hydra/schema/strategy/d2f@_here_``): Hydra leaves ``hydra/`` groups out of the app's
# ``--help`` and of a group's option list, so users see only the presets.
_GROUP_SCHEMAS: dict[str, list[tuple[str, type]]] = {
    "model": [("default", ModelConfig)],
    "strategy": [(name.value, cls) for name, cls in STRATEGY_CONFIGS.items()],
    "sampling": [("naive", SamplingConfig), ("edit", EditSamplingConfig)],
    "parallel": [("default", ParallelConfig)],
    "lora": [("default", LoRAConfig)],
    "cache": [("default", CacheConfig)],
    "runtime": [("default", RuntimeConfig)],
    "quantization": [("default", QuantizationConfig)],
}
SCHEMA_GROUP = "hydra/schema"


def register_configs() -> None:
    """Store the schemas in Hydra's ConfigStore (idempotent: storing again replaces them).

    Root: ``config_schema`` (Config) and ``experiment_config_schema`` (what conf/config.yaml
    extends). Groups: ``hydra/schema/<group>/<name>``: ``model/default``, ``strategy/<strategy>``
    for every strategy, ``sampling/naive`` / ``sampling/edit``, and ``default`` for parallel,
    lora, cache, runtime and quantization. A preset names its schema first in its defaults list.
    """
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    cs.store(name="experiment_config_schema", node=ExperimentConfig)
    for group, schemas in _GROUP_SCHEMAS.items():
        for name, cls in schemas:
            cs.store(group=f"{SCHEMA_GROUP}/{group}", name=name, node=cls)


def config_from_hydra(cfg: DictConfig) -> Config:
    """Build the validated :class:`Config` from a composed config (experiment-only keys are skipped).

    Interpolations are resolved against the whole config first, so an engine value may
    refer to an experiment node. Invalid values and combinations raise Config's ValueError.
    """
    _reject_added_keys(cfg, "")
    cfg = copy.deepcopy(cfg)
    OmegaConf.resolve(cfg)
    engine = OmegaConf.masked_copy(cfg, [k for k in CONFIG_KEYS if k in cfg])
    # Merging into the Config schema types the root, so to_object calls Config(...);
    # the group nodes keep their own (sub)classes, e.g. D2FStrategyConfig.
    typed = OmegaConf.merge(OmegaConf.structured(Config), engine)
    return OmegaConf.to_object(typed)


def _reject_added_keys(node: DictConfig, where: str) -> None:
    """Raise on keys a schema does not declare (``+strategy.typo=1`` adds them to typed nodes).

    OmegaConf would otherwise drop such keys or set them as plain attributes, and a typo
    would be silent.
    """
    schema = OmegaConf.get_type(node)
    if is_dataclass(schema):
        known = {f.name for f in fields(schema)}
        extra = sorted(str(k) for k in node.keys() if k not in known and not (where == "" and k == "hydra"))
        if extra:
            label = f"{where} ({schema.__name__})" if where else f"the config root ({schema.__name__})"
            raise ValueError(f"{label} has no option(s) {extra}; its options are {sorted(known)}. "
                             "Drop the '+' override or fix the key's spelling")
    for key in node.keys():
        if where == "" and key == "hydra":  # present with return_hydra_config=True; Hydra's own schema
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
            _reject_added_keys(child, f"{where}.{key}" if where else str(key))
