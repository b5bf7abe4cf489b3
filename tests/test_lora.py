"""PEFT LoRA adapters: merged at load == applied unmerged == a dense reference that adds
scale·B·A to each adapted checkpoint tensor explicitly; TP=2 equals TP=1; every malformed or
mismatched adapter is a ValueError."""

from __future__ import annotations

import json
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from diffulex.config.checkpoint import load_hf_config
from diffulex.layers.attention_metadata import AttentionMetadata
from diffulex.layers.parallel import TPGroup
from diffulex.lora import LoRALinear, load_weights_with_lora
from diffulex.registry import AutoModel
from diffulex.tiny import ensure_tiny_checkpoint, write_tiny_lora
from reference_decoder import dense_logits, load_dense_model
from test_model_families import dims, mask_of, random_ids, reference_logits, run, tiny

B = 4
QWEN_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LLADA_TARGETS = ["q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out"]
LLADA2_TARGETS = ["query_key_value", "dense", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]  # dense layer 0


@pytest.fixture(scope="module", autouse=True)
def _tiny_root(tiny_root):
    """Reuse the session's tiny checkpoints."""


def explicit_merge(w: dict, adapter) -> dict:
    """The reference: the base weight dict with scale·B@A added to each adapted tensor, scale read here."""
    meta = json.loads((adapter / "adapter_config.json").read_text())
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    out = dict(w)
    for key, a in tensors.items():
        if ".lora_A." not in key:
            continue
        module = key.removeprefix("base_model.model.").split(".lora_A.")[0]
        b = tensors[key.replace(".lora_A.", ".lora_B.")]
        short = module.rsplit(".", 1)[-1]
        r, alpha = meta["rank_pattern"].get(short, meta["r"]), meta["alpha_pattern"].get(short, meta["lora_alpha"])
        assert a.shape[0] == r
        scale = alpha / math.sqrt(r) if meta["use_rslora"] else alpha / r
        out[f"{module}.weight"] = w[f"{module}.weight"] + scale * b @ a
    return out


def lora_model(family, path, adapter, merge, tp=TPGroup()):
    model = AutoModel.get(family)(load_hf_config(path), tp=tp, dtype=torch.float32)
    load_weights_with_lora(model, path, adapter, merge=merge)
    return model


def two_sequences(model, vocab, block):
    a, b = random_ids(vocab, 11, 1), random_ids(vocab, 6, 2)
    logits = run(model, torch.cat([a, b]), AttentionMetadata.for_dense([11, 6], block_size=block))
    return (a, b), logits


@pytest.mark.parametrize("family,targets,extra", [
    ("dream", QWEN_TARGETS, {}),
    ("dream", QWEN_TARGETS, dict(use_rslora=True, rank_pattern={"o_proj": 2}, alpha_pattern={"down_proj": 3.0})),
    ("llada", LLADA_TARGETS, {}),
    ("sdar", ["q_proj", "v_proj", "down_proj"], {}),
])
def test_qwen_like_merged_equals_unmerged_equals_reference(tmp_path, family, targets, extra):
    path, cfg, w = tiny(family)
    adapter = write_tiny_lora(family, path, tmp_path / "adapter", targets, r=4, alpha=8, seed=3, **extra)
    dm = dims(family, cfg)
    w_ref = explicit_merge(w, adapter)
    vocab = w[dm["names"]["embed"]].shape[0]
    for merge in (True, False):
        model = lora_model(family, path, adapter, merge)
        assert any(isinstance(m, LoRALinear) for m in model.modules()) is (not merge)
        (a, b), logits = two_sequences(model, vocab, B)
        ref = torch.cat([reference_logits(w_ref, dm, a, mask_of(11, B)), reference_logits(w_ref, dm, b, mask_of(6, B))])
        torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)
    base = torch.cat([reference_logits(w, dm, a, mask_of(11, B)), reference_logits(w, dm, b, mask_of(6, B))])
    assert (base - ref).abs().max() > 1e-2, "the adapter has no effect"


def llada2_reference(w, cfg, vocab):
    a, b = random_ids(vocab, 11, 1), random_ids(vocab, 6, 2)
    with torch.no_grad():
        return torch.cat([dense_logits(w, cfg, a, mask_of(11, B)), dense_logits(w, cfg, b, mask_of(6, B))])


def test_llada2_fused_qkv_and_dense_mlp_merged_equals_unmerged_equals_reference(tmp_path):
    path = str(ensure_tiny_checkpoint("llada2"))
    w, cfg = load_dense_model(path)
    adapter = write_tiny_lora("llada2", path, tmp_path / "adapter", LLADA2_TARGETS, r=4, alpha=8, seed=1)
    ref = llada2_reference(explicit_merge(w, adapter), cfg, cfg["vocab_size"])
    for merge in (True, False):
        _, logits = two_sequences(lora_model("llada2", path, adapter, merge), cfg["vocab_size"], B)
        torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)
    assert (llada2_reference(w, cfg, cfg["vocab_size"]) - ref).abs().max() > 1e-2


def test_llada2_expert_lora_merges_and_is_refused_unmerged(tmp_path):
    """gate/up/down_proj also match every routed and shared expert: merged at load they equal the
    reference; unmerged LoRA on stacked experts is not implemented and says how to merge instead."""
    path = str(ensure_tiny_checkpoint("llada2"))
    w, cfg = load_dense_model(path)
    adapter = write_tiny_lora("llada2", path, tmp_path / "adapter", ["gate_proj", "up_proj", "down_proj"], seed=2)
    assert any(".experts.5.up_proj." in k for k in load_file(str(adapter / "adapter_model.safetensors")))
    _, logits = two_sequences(lora_model("llada2", path, adapter, True), cfg["vocab_size"], B)
    torch.testing.assert_close(logits, llada2_reference(explicit_merge(w, adapter), cfg, cfg["vocab_size"]),
                               atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"experts\.w(13|2).*StackedExperts.*lora\.merge=true"):
        lora_model("llada2", path, adapter, False)


@pytest.mark.parametrize("style", ["named", "bare"])
def test_key_prefix_and_adapter_name_variants_load_the_same(tmp_path, style):
    path = str(ensure_tiny_checkpoint("dream"))
    peft = write_tiny_lora("dream", path, tmp_path / "peft", ["q_proj", "o_proj"], seed=4)
    other = write_tiny_lora("dream", path, tmp_path / style, ["q_proj", "o_proj"], seed=4, key_style=style)
    vocab = load_hf_config(path).vocab_size
    expected = two_sequences(lora_model("dream", path, peft, True), vocab, B)[1]
    torch.testing.assert_close(two_sequences(lora_model("dream", path, other, False), vocab, B)[1], expected,
                               atol=1e-5, rtol=1e-5)


# ----- errors -----

def _rewrite(adapter, edit_tensors=None, **meta):
    if meta:
        cfg = json.loads((adapter / "adapter_config.json").read_text())
        (adapter / "adapter_config.json").write_text(json.dumps(dict(cfg, **meta)))
    if edit_tensors:
        tensors = load_file(str(adapter / "adapter_model.safetensors"))
        save_file(edit_tensors(tensors), str(adapter / "adapter_model.safetensors"))
    return adapter


def test_config_time_errors(tmp_path, tiny_path):
    from diffulex.config import Config

    dream = tiny_path("dream")
    make = lambda name, targets=("q_proj",): write_tiny_lora("dream", dream, tmp_path / name, list(targets))  # noqa
    with pytest.raises(ValueError, match="lora.path"):
        Config(dream, lora_path=str(tmp_path / "missing"))
    no_weights = make("no_weights")
    os.remove(no_weights / "adapter_model.safetensors")
    with pytest.raises(ValueError, match="adapter_model.safetensors"):
        Config(dream, lora_path=str(no_weights))
    with pytest.raises(ValueError, match="query_key_value.*matches no module"):  # a llada2 adapter on dream
        Config(dream, lora_path=str(_rewrite(make("foreign"), target_modules=["query_key_value"])))
    with pytest.raises(ValueError, match="positive int"):
        Config(dream, lora_path=str(_rewrite(make("r0"), r=0)))
    with pytest.raises(ValueError, match="use_dora"):
        Config(dream, lora_path=str(_rewrite(make("dora"), use_dora=True)))
    ghost = "base_model.model.model.layers.0.self_attn.g_proj.lora_{}.weight"
    extra = _rewrite(make("ghost"), lambda t: dict(t, **{ghost.format(ab): torch.zeros(4, 4) for ab in "AB"}))
    with pytest.raises(ValueError, match="g_proj.*no base tensor"):
        Config(dream, lora_path=str(extra))
    unpaired = _rewrite(make("unpaired"), lambda t: {k: v for k, v in t.items()
                                                     if "layers.1" not in k or "lora_B" in k})
    with pytest.raises(ValueError, match="lora_B but no lora_A"):
        Config(dream, lora_path=str(unpaired))
    assert Config(dream, lora_path=str(make("ok"))).lora.enabled is True


def test_load_time_rank_and_shape_errors(tmp_path):
    path = str(ensure_tiny_checkpoint("dream"))
    rank = _rewrite(write_tiny_lora("dream", path, tmp_path / "rank", ["q_proj"]), r=8)
    with pytest.raises(ValueError, match=r"r=8"):
        lora_model("dream", path, rank, True)
    key = "base_model.model.model.layers.0.mlp.up_proj.lora_A.weight"
    wide = _rewrite(write_tiny_lora("dream", path, tmp_path / "wide", ["up_proj"]),
                    lambda t: dict(t, **{key: torch.zeros(4, 65)}))
    for merge in (True, False):
        with pytest.raises(ValueError, match=r"up_proj.*(shape|inputs)"):
            lora_model("dream", path, wide, merge)
    key = "base_model.model.model.layers.0.self_attn.o_proj.lora_A.weight"
    wide_row = _rewrite(write_tiny_lora("dream", path, tmp_path / "wide_row", ["o_proj"]),
                        lambda t: dict(t, **{key: torch.zeros(4, 65)}))
    with pytest.raises(ValueError, match=r"o_proj.*shape"):
        lora_model("dream", path, wide_row, False)


# ----- engine end to end -----

def test_engine_generates_with_merged_and_unmerged_adapter(tmp_path):
    from diffulex import Diffulex, SamplingParams

    path = str(ensure_tiny_checkpoint("dream"))
    adapter = write_tiny_lora("dream", path, tmp_path / "adapter", QWEN_TARGETS, r=4, alpha=16, seed=5)
    prompts = [[(5 * i + 3 * j) % 200 + 20 for i in range(n)] for j, n in enumerate((5, 9))]
    kw = dict(decoding_strategy="d2f", block_size=8, page_size=8, buffer_size=2, dtype="float32")
    tokens = {}
    for name, extra in (("base", {}), ("merged", dict(lora_path=str(adapter), pre_merge_lora=True)),
                        ("unmerged", dict(lora_path=str(adapter), pre_merge_lora=False))):
        with Diffulex(path, **kw, **extra) as llm:
            tokens[name] = [o.token_ids for o in llm.generate(prompts, SamplingParams(max_tokens=16))]
    assert tokens["merged"] == tokens["unmerged"]
    assert tokens["merged"] != tokens["base"], "the adapter has no effect on generation"


# ----- tensor parallelism: 2 CPU ranks over gloo reproduce the single-rank logits -----

def tp_logits(rank, size, path, adapter, merge):
    model = lora_model("dream", path, adapter, merge, tp=TPGroup(rank, size))
    return two_sequences(model, model.dims.vocab_size, B)[1]


def tp_worker(rank, size, port, path, adapter, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=size)
    try:
        for merge in (True, False):
            torch.save(tp_logits(rank, size, path, adapter, merge), f"{out}/logits_{merge}_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_tp2_lora_matches_tp1(tmp_path):
    path = str(ensure_tiny_checkpoint("dream"))
    # Column (q|k|v, gate|up), row (o, down) and vocab-parallel (lm_head) targets.
    adapter = str(write_tiny_lora("dream", path, tmp_path / "adapter", QWEN_TARGETS + ["lm_head"], seed=6))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(tp_worker, args=(2, port, path, adapter, str(tmp_path)), nprocs=2, join=True)
    expected = tp_logits(0, 1, path, adapter, True)
    for merge in (True, False):
        for rank in range(2):
            got = torch.load(tmp_path / f"logits_{merge}_rank{rank}.pt")
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


# ----- the Hydra group -----

def test_hydra_adapter_preset_needs_a_path(tmp_path, tiny_path):
    from hydra import compose, initialize_config_dir

    from diffulex.integrations.hydra_store import config_from_hydra, register_configs

    adapter = write_tiny_lora("dream", tiny_path("dream"), tmp_path / "adapter", ["q_proj"])
    register_configs()
    conf = os.path.join(os.path.dirname(__file__), "..", "conf")
    with initialize_config_dir(config_dir=os.path.abspath(conf), version_base=None):
        compose_cfg = lambda *o: compose(config_name="config", overrides=["model=tiny_dream", *o])  # noqa: E731
        cfg = config_from_hydra(compose_cfg("lora=adapter", f"lora.path={adapter}", "lora.merge=false"))
        assert cfg.lora.enabled is True and cfg.lora.path == str(adapter) and cfg.lora.merge is False
        with pytest.raises(ValueError, match="lora.path"):
            config_from_hydra(compose_cfg("lora=adapter"))
