"""Every Hydra preset composes and validates into a Config; bad input fails with Config's errors.

Pins: the conf/ tree composes with the compose API; each preset (with the partner presets
its combination needs) builds a Config of the right group classes through
``config_from_hydra``; invalid combinations and values fail with ValueError; unknown keys
fail while composing; ``experiments/generate.py`` runs on a tiny model and fails loudly
without a checkpoint.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from diffulex.config import (CacheConfig, Config, D2FStrategyConfig, DiffusionGemmaStrategyConfig,
                             DMaxStrategyConfig, EditSamplingConfig, FastDLLMv2StrategyConfig, LoRAConfig,
                             ModelConfig, MultiBDStrategyConfig, ParallelConfig, RuntimeConfig,
                             SamplingConfig, VanillaStrategyConfig)
from diffulex.integrations.hydra_store import config_from_hydra, register_configs
from diffulex.tiny import TINY_FAMILIES, ensure_tiny_checkpoint, trained_families

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
GROUPS = ("model", "strategy", "sampling", "parallel", "lora", "cache", "runtime", "quantization", "logger")

# Real-checkpoint model presets -> the tiny family that stands in for the download.
REAL_MODEL_FAMILY = {
    "llada2_mini": "llada2", "llada2_flash": "llada2", "llada_8b": "llada", "dream_7b": "dream",
    "sdar_4b": "sdar", "fast_dllm_v2_7b": "fast_dllm_v2", "diffusion_gemma": "diffusion_gemma",
}
# Presets that are valid only together with other presets (on the default tiny_llada2 model).
PARTNERS = {
    ("strategy", "fast_dllm_v2"): ["model=tiny_fast_dllm_v2"],
    ("strategy", "diffusion_gemma"): ["model=tiny_diffusion_gemma"],
}
STRATEGY_CLASS = {
    "multi_bd": MultiBDStrategyConfig, "native": MultiBDStrategyConfig, "d2f": D2FStrategyConfig,
    "dmax": DMaxStrategyConfig, "fast_dllm_v2": FastDLLMv2StrategyConfig,
    "diffusion_gemma": DiffusionGemmaStrategyConfig, "vanilla": VanillaStrategyConfig,
}


def presets(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.endswith("_schema"))


ALL_PRESETS = [(g, p) for g in GROUPS for p in presets(g)]


@pytest.fixture(scope="module")
def compose_cfg(tiny_root):
    """compose_cfg(*overrides) -> the composed experiment config (offline, tiny checkpoints)."""
    register_configs()
    register_configs()  # idempotent
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        yield lambda *overrides: compose(config_name="config", overrides=list(overrides))


@pytest.fixture(scope="module")
def model_root(tmp_path_factory, tiny_path) -> Path:
    """A model root holding, under each real preset's folder name, a tiny checkpoint of its family."""
    root = tmp_path_factory.mktemp("models")
    for preset, family in REAL_MODEL_FAMILY.items():
        folder = yaml.safe_load((CONF / "model" / f"{preset}.yaml").read_text())["path"]
        (root / folder).symlink_to(tiny_path(family), target_is_directory=True)
    return root


@pytest.fixture(autouse=True)
def _no_env_model_root(monkeypatch):
    monkeypatch.delenv("DIFFULEX_MODEL_ROOT", raising=False)


def test_every_preset_directory_is_covered():
    """A new preset file is picked up by the parametrized test below; real models need a stand-in."""
    assert set(presets("model")) == ({f"tiny_{f}" for f in TINY_FAMILIES} | set(REAL_MODEL_FAMILY)
                                     | {f"trained_{f}" for f in trained_families()})
    assert set(presets("strategy")) == set(STRATEGY_CLASS)


@pytest.mark.parametrize("group,preset", ALL_PRESETS, ids=[f"{g}={p}" for g, p in ALL_PRESETS])
def test_preset_validates_into_config(compose_cfg, model_root, group, preset, tmp_path):
    overrides = [f"{group}={preset}", *PARTNERS.get((group, preset), [])]
    if (group, preset) == ("lora", "adapter"):
        from diffulex.tiny import write_tiny_lora

        overrides.append(f"lora.path={write_tiny_lora('llada2', None, tmp_path / 'adapter', ['query_key_value'])}")
    if group == "model" and preset in REAL_MODEL_FAMILY:
        overrides.append(f"model_root={model_root}")
    cfg = compose_cfg(*overrides)
    assert set(cfg) >= {"model", "strategy", "sampling", "logger", "experiment", "model_root"}

    config = config_from_hydra(cfg)

    assert type(config) is Config
    for name, cls in (("model", ModelConfig), ("parallel", ParallelConfig), ("lora", LoRAConfig),
                      ("cache", CacheConfig), ("runtime", RuntimeConfig)):
        assert type(getattr(config, name)) is cls
    edit = "sampling=edit" in overrides or (group, preset) in {("sampling", "edit"), ("strategy", "dmax")}
    expected_sampling = EditSamplingConfig if edit else SamplingConfig
    assert type(config.sampling) is expected_sampling
    if group == "strategy":
        assert type(config.strategy) is STRATEGY_CLASS[preset]
    if group == "model":
        family = REAL_MODEL_FAMILY.get(preset) or preset.removeprefix("tiny_").removeprefix("trained_")
        assert config.family == family
        if preset.startswith("trained_"):  # the shipped directory, read in place
            assert config.model.path == str(ensure_tiny_checkpoint(family, trained=True))
        if family == "diffusion_gemma":  # the native canvas replaces the default multi_bd
            assert type(config.strategy) is DiffusionGemmaStrategyConfig
            # the checkpoint's canvas (tiny: canvas_length 32; 256 when a config declares none)
            assert config.strategy.block_size == config.hf_config.canvas_length and config.cache.page_size == 256
        if preset in REAL_MODEL_FAMILY:
            assert config.model.name == preset
            assert config.model.path == str(model_root / cfg.model.path)
    if group == "parallel":
        assert config.world_size == (1 if preset == "single" else 2)
    if group == "runtime" and preset == "eager":
        assert config.runtime.enforce_eager is True


def test_d2f_normalization_through_hydra(compose_cfg):
    config = config_from_hydra(compose_cfg("strategy=d2f", "model=tiny_llada", "strategy.accept_threshold=0.8"))
    assert type(config.strategy) is D2FStrategyConfig
    assert config.strategy.accept_threshold == 0.8
    assert config.strategy.multi_block_prefix_full is True
    assert config.cache.enable_prefix_caching is False


def test_dmax_preset_selects_edit_sampling(compose_cfg):
    config = config_from_hydra(compose_cfg("strategy=dmax"))
    assert type(config.sampling) is EditSamplingConfig


def test_dmax_override_reaches_strategy(compose_cfg):
    config = config_from_hydra(compose_cfg("strategy=dmax", "sampling=edit", "strategy.accept_threshold=0.8"))
    assert type(config.strategy) is DMaxStrategyConfig
    assert config.strategy.accept_threshold == 0.8
    assert config.strategy.multi_block_prefix_full is False


def test_native_strategy_follows_the_family(compose_cfg):
    config = config_from_hydra(compose_cfg("strategy=native", "model=tiny_dream"))
    assert type(config.strategy) is D2FStrategyConfig


def test_dmax_with_naive_sampling_fails(compose_cfg):
    cfg = compose_cfg("strategy=dmax", "sampling=naive")  # the command line beats the preset's choice
    assert cfg.sampling.mode.value == "naive"
    with pytest.raises(ValueError, match="sampling"):
        config_from_hydra(cfg)


def test_strategy_incompatible_with_family_fails(compose_cfg):
    cfg = compose_cfg("strategy=fast_dllm_v2")  # default model: tiny llada2
    with pytest.raises(ValueError, match="strategy.name"):
        config_from_hydra(cfg)


def test_out_of_range_threshold_fails(compose_cfg):
    cfg = compose_cfg("strategy.accept_threshold=1.5")
    with pytest.raises(ValueError, match="accept_threshold"):
        config_from_hydra(cfg)


@pytest.mark.parametrize("override", ["strategy.no_such_knob=1", "no_such_key=1", "strategy.buffer_size=many",
                                      "strategy=no_such_preset", "model.no_such_field=x", "sampling.edit_threshold=0.5"])
def test_unknown_or_mistyped_key_fails_while_composing(compose_cfg, override):
    with pytest.raises(ConfigCompositionException):
        compose_cfg(override)


@pytest.mark.parametrize("override", ["+strategy.no_such_knob=1", "+no_such_key=1", "+model.no_such_field=x"])
def test_key_added_with_plus_fails_in_config_from_hydra(compose_cfg, override):
    cfg = compose_cfg(override)  # '+' opens the typed node; the schema check catches it
    with pytest.raises(ValueError, match="no_such"):
        config_from_hydra(cfg)


def test_experiment_node_accepts_new_keys(compose_cfg):
    config = config_from_hydra(compose_cfg("+experiment.note=hello", "experiment.sampling_params.max_tokens=8"))
    assert type(config) is Config


def test_enum_override_by_value(compose_cfg):
    config = config_from_hydra(compose_cfg("sampling.confidence=margin", "runtime.kernels=torch"))
    assert config.sampling.confidence.value == "margin"


def test_missing_checkpoint_names_the_model_root(compose_cfg, tmp_path):
    with pytest.raises(ValueError, match="DIFFULEX_MODEL_ROOT") as err:
        config_from_hydra(compose_cfg("model=llada2_mini"))
    assert "LLaDA2.0-mini" in str(err.value) and "model_root=" in str(err.value)
    with pytest.raises(ValueError, match=str(tmp_path)):
        config_from_hydra(compose_cfg("model=llada2_mini", f"model_root={tmp_path}"))


def test_model_root_from_environment(compose_cfg, model_root, monkeypatch):
    monkeypatch.setenv("DIFFULEX_MODEL_ROOT", str(model_root))
    cfg = compose_cfg("model=llada2_mini")
    assert cfg.model_root == str(model_root)
    assert config_from_hydra(cfg).model.path == str(model_root / "LLaDA2.0-mini")


def _run_generate(tmp_path, tiny_root, *overrides):
    env = dict(os.environ, DIFFULEX_TINY_ROOT=tiny_root, HF_HUB_OFFLINE="1", WANDB_MODE="disabled",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.pop("DIFFULEX_MODEL_ROOT", None)
    cmd = [sys.executable, str(REPO / "experiments" / "generate.py"), f"hydra.run.dir={tmp_path / 'run'}",
           *overrides]
    return subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)


def test_generate_script_prints_normalized_config(tmp_path, tiny_root):
    proc = _run_generate(tmp_path, tiny_root, "strategy=d2f", "model=tiny_llada2",
                         "experiment.sampling_params.max_tokens=8")
    assert proc.returncode == 0, proc.stderr
    printed = yaml.safe_load((tmp_path / "run" / "config.normalized.yaml").read_text())
    assert printed["strategy"]["name"] == "d2f"
    assert printed["strategy"]["buffer_size"] == 4
    assert printed["strategy"]["multi_block_prefix_full"] is True
    assert printed["cache"]["enable_prefix_caching"] is False


def test_generate_script_without_checkpoint_fails_loudly(tmp_path, tiny_root):
    proc = _run_generate(tmp_path, tiny_root, "strategy=dmax", "model=llada2_mini", "sampling=edit")
    assert proc.returncode != 0
    assert "LLaDA2.0-mini" in proc.stderr and "DIFFULEX_MODEL_ROOT" in proc.stderr


def test_diffusion_gemma_presets_pick_the_native_strategy_and_refuse_another(compose_cfg):
    cfg = compose_cfg("model=tiny_diffusion_gemma")
    assert cfg.strategy.name.value == "diffusion_gemma"  # the preset chose it; nothing rewritten
    config = config_from_hydra(cfg)
    assert config.strategy.name.value == "diffusion_gemma" and config.notes.changes == []
    with pytest.raises(ValueError, match="strategy.name='multi_bd' is invalid"):
        config_from_hydra(compose_cfg("model=tiny_diffusion_gemma", "strategy=multi_bd"))
