"""The composed engine configuration and every rule that ties its groups together.

``Config(model, **kwargs)`` accepts the checkpoint path (or a :class:`ModelConfig`),
group objects (``strategy=D2FStrategyConfig(...)``, or dicts) and the seed's flat names
(``decoding_strategy="d2f"``, see :mod:`.aliases`). Construction validates and normalizes
everything, loads the HF config and the tokenizer, and records what the engine needs.
``OmegaConf.to_object`` of a composed Hydra config calls the same constructor, so both
entry points obey the same rules.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Optional

from .aliases import FLAT_ALIASES, GROUPS
from .cache import CacheConfig
from .enums import SamplingMode, StrategyName
from .errors import Notes, coerce_enum, config_error
from .lora import LoRAConfig
from .model import ModelConfig
from .parallel import ParallelConfig
from .quantization import QuantizationConfig
from .runtime import RuntimeConfig
from .sampling import SAMPLING_CONFIGS, SamplingConfig
from .strategy import STRATEGY_CONFIGS, StrategyConfig

_GROUP_TYPES = {"model": ModelConfig, "sampling": SamplingConfig, "parallel": ParallelConfig,
                "lora": LoRAConfig, "cache": CacheConfig, "runtime": RuntimeConfig,
                "quantization": QuantizationConfig}


@dataclass(init=False)
class Config:
    """Everything an engine needs, validated. The groups, every field with its default and a comment:
    conf/ (tests/test_conf_tree.py keeps it equal to these dataclasses); the rules: resolve.py."""

    model: ModelConfig = field(default_factory=ModelConfig)
    # None: the family's native strategy (multi_bd for LLaDA2/SDAR, d2f for LLaDA/Dream, ...).
    strategy: Optional[StrategyConfig] = None
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)
    # Directory that relative model paths resolve against. Empty: env DIFFULEX_MODEL_ROOT.
    model_root: str = ""

    def __init__(self, model: Any = None, **kwargs: Any) -> None:
        flat = {k: kwargs.pop(k) for k in list(kwargs) if k in FLAT_ALIASES}
        unknown = sorted(k for k in kwargs if k not in GROUPS and k != "model_root")
        if unknown:
            raise ValueError(f"Config got unknown option(s) {unknown}; known: the groups {list(GROUPS)}, "
                             f"'model_root' and the flat names {sorted(FLAT_ALIASES)}")
        self.model = _as_group("model", ModelConfig(path=os.fspath(model)) if isinstance(
            model, (str, os.PathLike)) else (model if model is not None else ModelConfig()))
        self.strategy = _as_strategy(kwargs.get("strategy"), flat.pop("decoding_strategy", None))
        self.sampling = _as_sampling(kwargs.get("sampling"), flat.pop("sampling_mode", None))
        for name in ("parallel", "lora", "cache", "runtime", "quantization"):
            setattr(self, name, _as_group(name, kwargs.get(name) or _GROUP_TYPES[name]()))
        self.model_root = kwargs.get("model_root") or ""
        self._flat = flat
        self.__post_init__()

    def __post_init__(self) -> None:
        from .resolve import resolve_config

        self.notes = Notes()
        flat, self._flat = getattr(self, "_flat", {}), {}
        resolve_config(self, flat, self.notes)

    # -- derived facts (set by resolve_config) ---------------------------------------
    @property
    def world_size(self) -> int:
        return self.parallel.world_size

    @property
    def block_size(self) -> int:
        return self.strategy.block_size

    @property
    def mask_token_id(self) -> int:
        return self.model.mask_token_id

    @property
    def max_model_len(self) -> int:
        return self.runtime.max_model_len

    def __getstate__(self) -> dict:
        # The HF config may be an instance of a remote-code class that another process
        # cannot import by name, and workers need no tokenizer: both stay behind, and the
        # HF config is re-read (offline) from the validated checkpoint path on arrival.
        state = dict(self.__dict__)
        state.pop("tokenizer", None)
        state.pop("hf_config", None)
        return state

    def __setstate__(self, state: dict) -> None:
        from .checkpoint import load_hf_config

        self.__dict__.update(state)
        if "model" in state:
            self.hf_config = load_hf_config(self.model.path, self.model.trust_remote_code)

    def to_dict(self) -> dict:
        """The normalized config as plain data (what experiments save and log)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


def _plain(value: Any) -> Any:
    if is_dataclass(value):
        out = {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "value") and isinstance(value, str):  # str Enum
        return value.value
    return value


def _as_group(name: str, value: Any) -> Any:
    cls = _GROUP_TYPES[name]
    if isinstance(value, cls):
        return value
    if name == "quantization" and isinstance(value, str):  # Diffulex(path, quantization="fp8")
        value = {"weights": value}
    if isinstance(value, dict):
        try:
            return cls(**value)
        except TypeError as e:
            raise ValueError(f"{name}: {e}; the fields of {cls.__name__} are "
                             f"{[f.name for f in fields(cls)]}") from None
    raise config_error(name, value, f"a {cls.__name__} or a dict of its fields", f"pass {name}={cls.__name__}(...)")


def _as_strategy(value: Any, name: Any) -> Optional[StrategyConfig]:
    """Strategy object from a StrategyConfig, a dict, or a strategy name (decoding_strategy)."""
    if isinstance(value, StrategyConfig):
        if name is not None and coerce_enum(StrategyName, "decoding_strategy", name) != value.name:
            raise ValueError(f"decoding_strategy={name!r} contradicts strategy.name={value.name!s}; pass one")
        return value
    data = dict(value or {})
    if name is not None:
        data["name"] = name
    if "name" not in data:
        if data:
            raise ValueError(f"strategy={data!r} has no 'name'; add name=... (one of "
                             f"{[s.value for s in StrategyName]}) or use decoding_strategy=...")
        return None
    return strategy_from_dict(coerce_enum(StrategyName, "strategy.name", data["name"]), data)


def strategy_from_dict(name: StrategyName, data: dict) -> StrategyConfig:
    """Build the strategy class registered for ``name`` from its fields (unknown ones are errors)."""
    cls = STRATEGY_CONFIGS[name]
    data = {k: v for k, v in data.items() if k != "name"}
    known = {f.name for f in fields(cls)}
    bad = sorted(set(data) - known)
    if bad:
        raise ValueError(f"strategy {name.value!r} has no option(s) {bad}; its options are {sorted(known - {'name'})}")
    return cls(**data)


def _as_sampling(value: Any, mode: Any) -> SamplingConfig:
    if isinstance(value, SamplingConfig):
        if mode is not None and coerce_enum(SamplingMode, "sampling_mode", mode) != value.mode:
            raise ValueError(f"sampling_mode={mode!r} contradicts sampling.mode={value.mode!s}; pass one")
        return value
    data = dict(value or {})
    if mode is not None:
        data["mode"] = mode
    chosen = coerce_enum(SamplingMode, "sampling.mode", data.get("mode", SamplingMode.NAIVE))
    cls = SAMPLING_CONFIGS[chosen]
    known = {f.name for f in fields(cls)}
    bad = sorted(set(data) - known)
    if bad:
        raise ValueError(f"sampling mode {chosen.value!r} has no option(s) {bad}; its options are {sorted(known)}")
    data["mode"] = chosen
    return cls(**data)


__all__ = ["Config", "strategy_from_dict"]
