"""conf/ and the config dataclasses say the same thing: one source of truth, checked.

Every field of a group's dataclass appears in its base preset (the default option of the
group, or each strategy / sampling preset) with the dataclass's default value, except the field
the preset's schema fixes (``strategy.name``, ``sampling.mode``). Other presets (``eager``,
``tp2``, ``adapter``, ...) set only fields the dataclass has (the schema refuses others when
composing). A new dataclass field without its YAML line, or a YAML default that drifted from
the dataclass, fails here.
"""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path

import pytest
import yaml

from diffulex.config import (STRATEGY_CONFIGS, CacheConfig, EditSamplingConfig, LoRAConfig, ModelConfig,
                             ParallelConfig, QuantizationConfig, RuntimeConfig, SamplingConfig)

CONF = Path(__file__).resolve().parents[1] / "conf"
BASE = {"cache/default": CacheConfig, "runtime/default": RuntimeConfig, "parallel/single": ParallelConfig,
        "sampling/naive": SamplingConfig, "sampling/edit": EditSamplingConfig, "lora/none": LoRAConfig,
        "quantization/auto": QuantizationConfig, **{f"strategy/{n.value}": cls for n, cls in STRATEGY_CONFIGS.items()}}
FIXED_BY_SCHEMA = {"name", "mode"}
GROUP_CLASSES = {"cache": [CacheConfig], "runtime": [RuntimeConfig], "parallel": [ParallelConfig],
                 "sampling": [SamplingConfig, EditSamplingConfig], "lora": [LoRAConfig], "model": [ModelConfig],
                 "quantization": [QuantizationConfig],
                 "strategy": list(STRATEGY_CONFIGS.values())}


def _yaml(preset: str) -> dict:
    data = yaml.safe_load((CONF / f"{preset}.yaml").read_text()) or {}
    data.pop("defaults", None)
    return data


def _default(f: dataclasses.Field):
    value = f.default_factory() if f.default is dataclasses.MISSING else f.default
    return value.value if isinstance(value, enum.Enum) else value


@pytest.mark.parametrize("preset", sorted(BASE))
def test_base_preset_lists_every_field_with_the_dataclass_default(preset):
    data, fields = _yaml(preset), {f.name: f for f in dataclasses.fields(BASE[preset])}
    missing = sorted(set(fields) - set(data) - FIXED_BY_SCHEMA)
    assert not missing, f"conf/{preset}.yaml lacks {missing} (add each with a comment and the dataclass default)"
    drifted = {k: (v, _default(fields[k])) for k, v in data.items() if k in fields and v != _default(fields[k])}
    assert not drifted, f"conf/{preset}.yaml differs from the dataclass default: {drifted} (yaml, dataclass)"


@pytest.mark.parametrize("group", sorted(GROUP_CLASSES))
def test_every_preset_sets_only_real_fields(group):
    known = {f.name for cls in GROUP_CLASSES[group] for f in dataclasses.fields(cls)}
    for path in sorted((CONF / group).glob("*.yaml")):
        data = _yaml(f"{group}/{path.stem}")
        if group in data:  # a `# @package _global_` preset nests its group (strategy/native: null)
            data = data[group] or {}
        unknown = sorted(set(data) - known)
        assert not unknown, f"{path.relative_to(CONF)} sets {unknown}, which {group} has no field for"
