"""Config rules (SPEC §2 and the seed's normalization table), each with its offending input."""

from __future__ import annotations

import json
import logging
import os
import shutil

import pytest

from diffulex.config import (Config, D2FStrategyConfig, DMaxStrategyConfig, EditSamplingConfig,
                             MultiBDStrategyConfig, StrategyName)


# -- the seed's normalization table ---------------------------------------------------

def test_d2f_forces_prefix_full_and_disables_prefix_caching(tiny_path, caplog):
    with caplog.at_level(logging.WARNING, logger="diffulex.config"):
        cfg = Config(tiny_path("llada"), decoding_strategy="d2f", multi_block_prefix_full=False,
                     enable_prefix_caching=True)
    assert isinstance(cfg.strategy, D2FStrategyConfig)
    assert cfg.strategy.multi_block_prefix_full is True
    assert cfg.cache.enable_prefix_caching is False
    # Each user value that was changed is logged exactly once.
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("multi_block_prefix_full" in m for m in msgs) == 1
    assert sum("enable_prefix_caching" in m for m in msgs) == 1


def test_d2f_defaults_are_silent(tiny_path, caplog):
    with caplog.at_level(logging.WARNING, logger="diffulex.config"):
        cfg = Config(tiny_path("llada"), decoding_strategy="d2f")
    assert cfg.strategy.multi_block_prefix_full is True and cfg.cache.enable_prefix_caching is False
    assert not [r for r in caplog.records if "normalized" in r.getMessage()]


def test_multi_bd_forces_block_causal_prompt_and_keeps_prefix_caching_choice(tiny_path, caplog):
    with caplog.at_level(logging.WARNING, logger="diffulex.config"):
        cfg = Config(tiny_path("llada2"), decoding_strategy="multi_bd", multi_block_prefix_full=True,
                     enable_prefix_caching=False)
    assert isinstance(cfg.strategy, MultiBDStrategyConfig)
    assert cfg.strategy.multi_block_prefix_full is False
    assert cfg.cache.enable_prefix_caching is False  # the user's choice stands
    assert any("multi_block_prefix_full" in r.getMessage() for r in caplog.records)
    assert Config(tiny_path("llada2"), decoding_strategy="multi_bd").cache.enable_prefix_caching is True


def test_dmax_requires_edit_sampling(tiny_path):
    with pytest.raises(ValueError, match=r"sampling\.mode.*edit"):
        Config(tiny_path("llada2"), decoding_strategy="dmax")
    cfg = Config(tiny_path("llada2"), decoding_strategy="dmax", sampling_mode="edit",
                 multi_block_prefix_full=True)
    assert isinstance(cfg.strategy, DMaxStrategyConfig) and isinstance(cfg.sampling, EditSamplingConfig)
    assert cfg.strategy.multi_block_prefix_full is False
    assert cfg.strategy.buffer_size == 1


def test_dmax_and_edit_need_an_edit_capable_family(tiny_path):
    with pytest.raises(ValueError, match="'dmax'.*family 'llada'"):
        Config(tiny_path("llada"), decoding_strategy="dmax", sampling_mode="edit")
    with pytest.raises(ValueError, match="edit"):
        Config(tiny_path("dream"), sampling_mode="edit")


def test_edit_only_checkpoint_names_require_edit_mode(tiny_path):
    with pytest.raises(ValueError, match="trained for editing"):
        Config(tiny_path("llada2"), model_name="llada2dot1_mini")
    assert Config(tiny_path("llada2"), model_name="llada2dot1_mini", sampling_mode="edit").sampling.mode == "edit"


def _gemma_with_canvas(tiny_path, tmp_path, canvas):
    """The tiny DiffusionGemma checkpoint with ``canvas_length`` set to ``canvas`` (None: removed)."""
    path = tmp_path / f"dg{canvas}"
    shutil.copytree(tiny_path("diffusion_gemma"), path)
    cfg = json.loads((path / "config.json").read_text())
    cfg.pop("canvas_length", None)
    if canvas is not None:
        cfg["canvas_length"] = canvas
    (path / "config.json").write_text(json.dumps(cfg))
    return str(path)


@pytest.mark.parametrize("canvas", [256, None])
def test_diffusion_gemma_uses_native_defaults(tiny_path, tmp_path, caplog, canvas):
    """The seed's rule: block 256, page 256, buffer 1 (a 256 canvas, or a config that declares none)."""
    path = _gemma_with_canvas(tiny_path, tmp_path, canvas)
    with caplog.at_level(logging.WARNING, logger="diffulex.config"):
        cfg = Config(path, model_name="diffusion_gemma", page_size=32, buffer_size=4)
    s = cfg.strategy
    assert s.name == StrategyName.DIFFUSION_GEMMA
    assert (s.block_size, cfg.cache.page_size, s.buffer_size) == (256, 256, 1)
    msgs = " ".join(r.getMessage() for r in caplog.records)
    for name in ("cache.page_size", "strategy.buffer_size"):
        assert name in msgs
    # ... and recorded, for results.json and sweep tables.
    assert {c["key"]: c["used"] for c in cfg.notes.changes} == {"cache.page_size": 256, "strategy.buffer_size": 1}
    with pytest.raises(ValueError, match="canvas_length"):
        Config(path, block_size=32)  # the model denoises 256 positions at once


@pytest.mark.parametrize("strategy", ["multi_bd", "d2f", "vanilla", "fast_dllm_v2", "dmax"])
def test_diffusion_gemma_refuses_a_strategy_it_cannot_run(tiny_path, strategy):
    """Asked for explicitly, another strategy is an error (as on every family), never a silent rewrite."""
    with pytest.raises(ValueError, match=rf"strategy.name='{strategy}' is invalid.*'diffusion_gemma'"):
        Config(tiny_path("diffusion_gemma"), decoding_strategy=strategy)


def test_diffusion_gemma_block_is_the_checkpoints_canvas(tiny_path):
    cfg = Config(tiny_path("diffusion_gemma"), block_size=32)  # the tiny canvas_length: allowed
    assert cfg.strategy.block_size == 32 == Config(tiny_path("diffusion_gemma")).strategy.block_size


def test_diffusion_gemma_sampler_values_come_from_generation_config_unless_set(tiny_path):
    path = tiny_path("diffusion_gemma")
    with open(os.path.join(path, "generation_config.json")) as f:
        gen = json.load(f)
    cfg = Config(path)
    assert cfg.strategy.max_denoising_steps == gen["max_denoising_steps"]
    assert cfg.strategy.t_min == gen["t_min"]
    cfg = Config(path, diffusion_gemma_t_min=0.25)
    assert cfg.strategy.t_min == 0.25


def test_native_strategy_is_chosen_per_family(tiny_path):
    assert Config(tiny_path("llada2")).strategy.name == StrategyName.MULTI_BD
    assert Config(tiny_path("dream")).strategy.name == StrategyName.D2F
    assert Config(tiny_path("fast_dllm_v2")).strategy.name == StrategyName.FAST_DLLM_V2


# -- validations ------------------------------------------------------------------------

def test_model_path_must_exist(tmp_path):
    with pytest.raises(ValueError, match="model.path.*DIFFULEX_MODEL_ROOT"):
        Config(str(tmp_path / "nope"))


def test_relative_path_resolves_against_model_root(tiny_path, tmp_path):
    shutil.copytree(tiny_path("llada2"), tmp_path / "LLaDA2.0-mini")
    cfg = Config("LLaDA2.0-mini", model_root=str(tmp_path))
    assert cfg.model.path == str(tmp_path / "LLaDA2.0-mini")


@pytest.mark.parametrize("kwargs, pattern", [
    ({"model_name": "gpt2"}, "model.name"),
    ({"model_name": "dream"}, "family 'llada2'"),  # checkpoint of another family
    ({"decoding_strategy": "beam"}, "strategy.name"),
    ({"decoding_strategy": "fast_dllm_v2"}, "strategy.name"),  # not for llada2
    ({"sampling_mode": "greedy"}, "sampling.mode"),
    ({"block_size": 24}, "block_size"),
    ({"block_size": 0}, "block_size"),
    ({"page_size": 3}, "page_size"),
    ({"page_size": 2048}, "page_size"),
    ({"num_pages": 0}, "num_pages"),
    ({"accept_threshold": 1.5}, "accept_threshold"),
    ({"add_block_threshold": -0.1}, "add_block_threshold"),
    ({"buffer_size": 0}, "buffer_size"),
    ({"tensor_parallel_size": 3}, "tensor_parallel_size"),  # 4 heads
    ({"tensor_parallel_size": 0}, "tensor_parallel_size"),
    ({"expert_parallel_size": 3}, "expert_parallel_size"),  # 8 experts
    ({"device": "cuda"}, "parallel.device"),
    ({"device": "tpu"}, "parallel.device"),
    ({"device_ids": [0]}, "device_ids"),
    ({"distributed_backend": "nccl"}, "backend"),
    ({"master_port": 70000}, "master_port"),
    ({"use_lora": True}, "lora.path"),
    ({"lora_path": "/does/not/exist"}, "lora.path"),
    ({"enforce_eager": False}, "enforce_eager"),  # CUDA graphs without CUDA
    ({"kernels": "triton"}, "kernels"),
    ({"max_num_batched_tokens": 8}, "max_num_batched_tokens"),
    ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
    ({"mask_token_id": -1}, "mask_token_id"),
    ({"mask_token_id": 10**6}, "mask_token_id"),
    ({"dtype": "int8"}, "dtype"),
    ({"token_merge_top_k": 2}, "not an option of strategy 'multi_bd'"),  # a dmax knob on multi_bd
    ({"edit_threshold": 0.5}, "not an option of sampling mode 'naive'"),
])
def test_invalid_values_are_value_errors_naming_the_field(tiny_path, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern) as info:
        Config(tiny_path("llada2"), **kwargs)
    assert "allowed" in str(info.value) or "options" in str(info.value)


def test_fast_dllm_v2_with_buffer_one_is_an_error(tiny_path):
    with pytest.raises(ValueError, match="multi_bd"):
        Config(tiny_path("fast_dllm_v2"), buffer_size=1)
    assert Config(tiny_path("fast_dllm_v2"), buffer_size=2).strategy.sub_block_size == 16


def test_unknown_config_option_is_an_error_for_config(tiny_path):
    with pytest.raises(ValueError, match="unknown option"):
        Config(tiny_path("llada2"), acept_threshold=0.9)


def test_lora_adapter_must_exist_and_be_peft(tiny_path, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    with pytest.raises(ValueError, match="adapter_config.json"):
        Config(tiny_path("llada2"), lora_path=str(adapter))
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 4, "target_modules": ["query_key_value"]}))
    with pytest.raises(ValueError, match="adapter_model.safetensors"):
        Config(tiny_path("llada2"), lora_path=str(adapter))
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="safetensors"):
        Config(tiny_path("llada2"), lora_path=str(adapter))
    from diffulex.tiny import write_tiny_lora

    good = write_tiny_lora("llada2", tiny_path("llada2"), tmp_path / "ok", ["query_key_value"])
    cfg = Config(tiny_path("llada2"), lora_path=str(good))
    assert cfg.lora.enabled is True and cfg.lora.path == str(good)


# -- checkpoint facts: tokenizer, HF config, lengths -----------------------------------------

def test_tokenizer_facts_are_recorded(tiny_path):
    cfg = Config(tiny_path("llada2"))
    tok = cfg.tokenizer
    assert cfg.tokenizer_vocab_size == len(tok)
    assert tok.eos_token_id in cfg.eos_token_ids
    assert cfg.model.mask_token_id == tok.mask_token_id


def test_stop_ids_include_generation_config_eos_list(tiny_path):
    path = tiny_path("sdar")
    with open(os.path.join(path, "generation_config.json")) as f:
        gen_eos = json.load(f)["eos_token_id"]
    assert set(gen_eos) <= set(Config(path).eos_token_ids)


def test_explicit_mask_token_wins_over_tokenizer(tiny_path):
    cfg = Config(tiny_path("llada2"), mask_token_id=7)
    assert cfg.model.mask_token_id == 7


def test_mask_token_from_tokenizer_replaces_hf_config_value(tiny_path, tmp_path):
    path = tmp_path / "ckpt"
    shutil.copytree(tiny_path("llada2"), path)
    conf = json.loads((path / "config.json").read_text())
    tok_mask = Config(str(path)).tokenizer.mask_token_id
    conf["mask_token_id"] = tok_mask + 1  # the config disagrees; the tokenizer wins
    (path / "config.json").write_text(json.dumps(conf))
    assert Config(str(path)).model.mask_token_id == tok_mask


def test_max_model_len_is_clamped_to_the_model_maximum(tiny_path, caplog):
    cfg = Config(tiny_path("llada2"))
    limit = cfg.checkpoint.max_position_embeddings
    assert cfg.runtime.max_model_len == limit
    with caplog.at_level(logging.WARNING, logger="diffulex.config"):
        cfg = Config(tiny_path("llada2"), max_model_len=limit * 4)
    assert cfg.runtime.max_model_len == limit
    assert any("max_model_len" in r.getMessage() for r in caplog.records)
    assert Config(tiny_path("llada2"), max_model_len=100).runtime.max_model_len == 100


def test_config_survives_pickling_for_workers(tiny_path):
    import pickle

    cfg = Config(tiny_path("llada2"), accept_threshold=0.8)
    back = pickle.loads(pickle.dumps(cfg))
    assert back.strategy.accept_threshold == 0.8
    assert back.hf_config.to_dict()["num_hidden_layers"] == cfg.hf_config.to_dict()["num_hidden_layers"]
    assert not hasattr(back, "tokenizer")


def test_to_dict_is_plain_data(tiny_path):
    import json as _json

    data = Config(tiny_path("dream")).to_dict()
    assert data["strategy"]["name"] == "d2f"
    _json.dumps(data)  # no enums or objects left
