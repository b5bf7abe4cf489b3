"""Offline config/tokenizer loading and checkpoint facts over the tiny checkpoints."""

import json

import pytest
import torch

from diffulex.config.checkpoint import auto_tokenizer_from_pretrained, load_hf_config, read_checkpoint_facts
from diffulex.tiny import TINY_FAMILIES, write_tiny_checkpoint

REAL = {  # family: (model_type, architecture, config class name)
    "llada2": ("llada2_moe", "LLaDA2MoeModelLM", "LLaDA2MoeConfig"),
    "llada": ("llada", "LLaDAModelLM", "LLaDAConfig"),
    "dream": ("Dream", "DreamModel", "DreamConfig"),
    "sdar": ("sdar", "SDARForCausalLM", "SDARConfig"),
    "sdar_moe": ("sdar_moe", "SDARMoeForCausalLM", "SDARMoeConfig"),
    "fast_dllm_v2": ("Fast_dLLM_Qwen", "Fast_dLLM_QwenForCausalLM", "Fast_dLLM_QwenConfig"),
    "diffusion_gemma": ("diffusion_gemma", "DiffusionGemmaForBlockDiffusion", "DiffusionGemmaConfig"),
}
MASK_TOKEN = {"llada2": "<|mask|>", "llada": "<|mdm_mask|>", "dream": "<|mask|>", "sdar": "<|MASK|>",
              "sdar_moe": "<|MASK|>", "fast_dllm_v2": "|<MASK>|", "diffusion_gemma": "<mask>"}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_load")
    return {fam: write_tiny_checkpoint(fam, root / fam) for fam in TINY_FAMILIES}


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_config_tokenizer_and_facts(written, family):
    path = written[family]
    model_type, arch, cls = REAL[family]
    config = load_hf_config(path)
    assert config.model_type == model_type and list(config.architectures) == [arch]
    assert type(config).__name__ == cls
    facts = read_checkpoint_facts(path, config)
    assert facts.family == family and facts.model_type == model_type
    assert (facts.hidden_size, facts.num_attention_heads, facts.num_key_value_heads, facts.num_layers) == (64, 4, 2, 2)
    assert facts.max_position_embeddings == 512
    tok = auto_tokenizer_from_pretrained(path)
    assert facts.vocab_size > len(tok)
    text = "Solve: 12 + 30."
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    mask_id = tok.convert_tokens_to_ids(MASK_TOKEN[family])
    assert 0 <= mask_id < 16
    if facts.mask_token_id is not None:
        assert facts.mask_token_id == mask_id
    if tok.mask_token is not None:
        assert tok.mask_token_id == mask_id
    assert facts.eos_token_ids and tok.eos_token_id in facts.eos_token_ids
    text_cfg = getattr(config, "text_config", config)
    if getattr(text_cfg, "pad_token_id", None) is not None:
        assert text_cfg.pad_token_id == tok.pad_token_id
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)


def test_specific_facts(written):
    facts = {f: read_checkpoint_facts(written[f], load_hf_config(written[f])) for f in TINY_FAMILIES}
    assert facts["llada2"].num_experts == 8 and facts["sdar_moe"].num_experts == 8
    assert facts["llada"].num_experts == 0 and facts["dream"].num_experts == 0
    assert facts["diffusion_gemma"].num_experts == 4
    assert facts["sdar"].native_block_size == 4 and facts["fast_dllm_v2"].native_block_size == 32
    assert facts["diffusion_gemma"].native_block_size == 32 and facts["llada2"].native_block_size is None
    im_end, eot = 2, 0  # Qwen-family special ids in the tiny tokenizer
    assert facts["sdar"].eos_token_ids == (eot, im_end)
    assert facts["fast_dllm_v2"].eos_token_ids == (im_end, eot)
    config = load_hf_config(written["llada2"])
    assert (config.n_group, config.topk_group, config.score_function) == (4, 2, "sigmoid")
    assert config.partial_rotary_factor == 0.5 and config.use_qk_norm is True


@pytest.mark.parametrize("family", ["llada2", "llada", "dream", "sdar", "sdar_moe", "fast_dllm_v2"])
def test_fallback_without_module_or_auto_map(tmp_path, family):
    path = write_tiny_checkpoint(family, tmp_path / family)
    data = json.loads((path / "config.json").read_text())
    module = data.pop("auto_map")["AutoConfig"].rsplit(".", 1)[0]
    (path / f"{module}.py").unlink()
    (path / "config.json").write_text(json.dumps(data))
    config = load_hf_config(path)
    assert config.model_type == REAL[family][0]
    assert read_checkpoint_facts(path, config).family == family


def test_auto_map_pointing_at_missing_module_falls_back(tmp_path):
    path = write_tiny_checkpoint("sdar", tmp_path / "sdar")
    (path / "configuration_sdar.py").unlink()
    assert load_hf_config(path).block_size == 4


def test_missing_or_malformed_config(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        load_hf_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="JSON"):
        load_hf_config(tmp_path)
    with pytest.raises(ValueError, match="tokenizer"):
        auto_tokenizer_from_pretrained(tmp_path)


def test_diffusion_gemma_loads_into_transformers(written):
    from transformers import DiffusionGemmaForBlockDiffusion

    model, info = DiffusionGemmaForBlockDiffusion.from_pretrained(str(written["diffusion_gemma"]),
                                                                  output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert isinstance(model.lm_head.weight, torch.Tensor)
