"""Tiny checkpoints: real layout, real names, determinism, sharding, caching, CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from diffulex.tiny import TINY_FAMILIES, ensure_tiny_checkpoint, write_tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]
L, E = 2, 8  # tiny layers / experts


def _mlp(p):
    return {f"{p}.{n}_proj.weight" for n in ("gate", "up", "down")}


def _expected_llada2():
    names = {"model.word_embeddings.weight", "model.norm.weight", "lm_head.weight"}
    for i in range(L):
        p = f"model.layers.{i}"
        names |= {f"{p}.input_layernorm.weight", f"{p}.post_attention_layernorm.weight",
                  f"{p}.attention.query_key_value.weight", f"{p}.attention.query_layernorm.weight",
                  f"{p}.attention.key_layernorm.weight", f"{p}.attention.dense.weight"}
        if i == 0:
            names |= _mlp(f"{p}.mlp")
        else:
            names |= {f"{p}.mlp.gate.weight", f"{p}.mlp.gate.expert_bias"} | _mlp(f"{p}.mlp.shared_experts")
            for e in range(E):
                names |= _mlp(f"{p}.mlp.experts.{e}")
    return names


def _expected_llada():
    names = {"model.transformer.wte.weight", "model.transformer.ln_f.weight", "model.transformer.ff_out.weight"}
    for i in range(L):
        names |= {f"model.transformer.blocks.{i}.{n}.weight" for n in (
            "q_proj", "k_proj", "v_proj", "attn_out", "attn_norm", "ff_norm", "ff_proj", "up_proj", "ff_out")}
    return names


def _expected_qwen(bias, qk_norm, moe):
    names = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for i in range(L):
        p = f"model.layers.{i}"
        names |= {f"{p}.input_layernorm.weight", f"{p}.post_attention_layernorm.weight"}
        names |= {f"{p}.self_attn.{n}_proj.weight" for n in "qkvo"}
        if bias:
            names |= {f"{p}.self_attn.{n}_proj.bias" for n in "qkv"}
        if qk_norm:
            names |= {f"{p}.self_attn.q_norm.weight", f"{p}.self_attn.k_norm.weight"}
        if moe:
            names.add(f"{p}.mlp.gate.weight")
            for e in range(E):
                names |= _mlp(f"{p}.mlp.experts.{e}")
        else:
            names |= _mlp(f"{p}.mlp")
    return names


EXPECTED = {
    "llada2": _expected_llada2,
    "llada": _expected_llada,
    "dream": lambda: _expected_qwen(True, False, False),
    "fast_dllm_v2": lambda: _expected_qwen(True, False, False),
    "sdar": lambda: _expected_qwen(False, True, False),
    "sdar_moe": lambda: _expected_qwen(False, True, True),
}


def _tensor_names(path: Path) -> list[str]:
    names = []
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), "pt") as handle:
            names += list(handle.keys())
    return names


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {fam: write_tiny_checkpoint(fam, root / fam) for fam in TINY_FAMILIES}


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_real_weight_names(written, family):
    names = _tensor_names(written[family])
    assert len(names) == len(set(names))
    assert set(names) == EXPECTED[family]()


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_padded_vocab_and_dtype(written, family):
    config = json.loads((written[family] / "config.json").read_text())
    text = config.get("text_config", config)
    tok = json.loads((written[family] / "tokenizer.json").read_text())
    assert text["vocab_size"] > len(tok["model"]["vocab"])
    assert config.get("torch_dtype", config.get("dtype")) == "float32"


def test_remote_code_module_matches_auto_map(written):
    for family in set(TINY_FAMILIES) - {"diffusion_gemma"}:
        config = json.loads((written[family] / "config.json").read_text())
        module, cls = config["auto_map"]["AutoConfig"].rsplit(".", 1)
        source = (written[family] / f"{module}.py").read_text()
        assert f"class {cls}(PretrainedConfig)" in source
        assert f'model_type = "{config["model_type"]}"' in source
        assert not list(written[family].glob("modeling*.py"))


def test_llada2_sharded_index_covers_every_tensor_once(written):
    path = written["llada2"]
    index = json.loads((path / "model.safetensors.index.json").read_text())
    shards = sorted(path.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 2 and not (path / "model.safetensors").exists()
    seen, total = [], 0
    for shard in shards:
        with safe_open(str(shard), "pt") as handle:
            for name in handle.keys():
                seen.append(name)
                assert index["weight_map"][name] == shard.name
                t = handle.get_tensor(name)
                total += t.numel() * t.element_size()
    assert sorted(seen) == sorted(index["weight_map"]) and len(seen) == len(set(seen))
    assert index["metadata"]["total_size"] == total


@pytest.mark.parametrize("family", ["llada2", "sdar_moe", "diffusion_gemma"])
def test_deterministic(tmp_path, written, family):
    again = write_tiny_checkpoint(family, tmp_path / "again")
    for f in written[family].iterdir():
        if f.suffix in (".safetensors", ".json", ".py"):
            assert (again / f.name).read_bytes() == f.read_bytes(), f.name


def test_seed_changes_weights(tmp_path, written):
    other = write_tiny_checkpoint("sdar", tmp_path / "s1", seed=1)
    assert (other / "model.safetensors").read_bytes() != (written["sdar"] / "model.safetensors").read_bytes()


def test_expert_bias_is_nontrivial(written):
    path = written["llada2"]
    index = json.loads((path / "model.safetensors.index.json").read_text())
    name = "model.layers.1.mlp.gate.expert_bias"
    with safe_open(str(path / index["weight_map"][name]), "pt") as handle:
        assert handle.get_tensor(name).abs().max() > 0.01


def test_unknown_family_lists_known(tmp_path):
    with pytest.raises(ValueError, match="llada2"):
        write_tiny_checkpoint("gpt2", tmp_path)
    with pytest.raises(ValueError, match="known"):
        ensure_tiny_checkpoint("nope", root=tmp_path)


def test_ensure_reuses_directory(tmp_path, monkeypatch):
    first = ensure_tiny_checkpoint("dream", root=tmp_path)
    assert first == tmp_path / "dream"
    marker = first / "marker"
    marker.write_text("x")
    assert ensure_tiny_checkpoint("dream", root=tmp_path) == first and marker.exists()
    monkeypatch.setenv("DIFFULEX_TINY_ROOT", str(tmp_path))
    assert ensure_tiny_checkpoint("dream") == first
    assert [p.name for p in tmp_path.iterdir()] == ["dream"]  # no temp dirs left behind


def test_cli_writes_checkpoint(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "diffulex.tiny", "--family", "llada2", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (out / "config.json").is_file() and (out / "model.safetensors.index.json").is_file()
