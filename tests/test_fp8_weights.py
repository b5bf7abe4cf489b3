"""FP8 (e4m3) weights for the linear layers: format, loading, conversion, config rules, engine (CPU, reference ops).

Pins: the block-wise format round-trips and a dequantized FP8 weight requantizes to the same
bytes; FP8 checkpoint streams (weight_scale_inv blocks, per-tensor / per-channel weight_scale,
halves in either order) are read dequantized and broken ones fail clearly; an FP8 checkpoint
loads exactly like its dequantized copy (weights=none) and, requantized in its own tiles, gives
back its bytes; quantize-at-load equals convert-then-load; ignored / built-in modules stay in full
precision; merged LoRA is merged before quantization and unmerged LoRA runs on FP8 layers; TP
shards are quantized locally; each config error names the field and the fix; greedy generation
with FP8 weights is deterministic and its logits are close to full precision.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from diffulex.config import Config
from diffulex.engine.distributed import ParallelState
from diffulex.engine.model_runner import ModelRunner
from diffulex.layers.attention_metadata import AttentionMetadata
from diffulex.layers.linear import LinearBase, RowParallelLinear
from diffulex.layers.parallel import TPGroup
from diffulex.quantization import FP8_DTYPE, dequantize_fp8, quantize_fp8
from diffulex.quantization.checkpoint import dequantized
from diffulex.quantization.convert import convert
from diffulex.tiny import ensure_tiny_checkpoint, write_tiny_lora

BLOCK = [32, 32]  # the tiny llada2's q / k / v / gate / up rows are multiples of 32: fused tiles line up
PAGE = 4


@pytest.fixture(scope="module")
def trained() -> str:
    return str(ensure_tiny_checkpoint("llada2", trained=True))


@pytest.fixture(scope="module")
def fp8_dir(trained, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("fp8") / "llada2-fp8"
    convert(trained, out, BLOCK)
    return str(out)


def runner(path: str, **kwargs) -> ModelRunner:
    return ModelRunner(Config(path, **kwargs), ParallelState())


def logits(model: torch.nn.Module, seed: int = 1) -> torch.Tensor:
    """Full-vocabulary logits of one 8-token block-causal prefill."""
    ids = torch.randint(0, 200, (8,), generator=torch.Generator().manual_seed(seed))
    pos = torch.arange(8)
    pages = torch.tensor([1, 0])
    meta = AttentionMetadata(
        cu_seqlens_q=torch.tensor([0, 8]), positions=pos, context_lens=torch.tensor([0]), page_table=pages[None],
        slot_mapping=pages[pos // PAGE] * PAGE + pos % PAGE, key_lo=torch.zeros_like(pos),
        key_hi=(pos // 4 + 1) * 4, cache_only=torch.tensor([False]), logits_indices=pos, page_size=PAGE)
    caches = [(torch.zeros(2, PAGE, h, d), torch.zeros(2, PAGE, h, d)) for h, d in model.kv_cache_spec()]
    with torch.inference_mode():
        return model.compute_logits(model(ids, pos, meta, caches))


def fp8_modules(model) -> dict[str, LinearBase]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LinearBase) and m.quant_block is not None}


# -- format ---------------------------------------------------------------------------------
@pytest.mark.parametrize("block", [(128, 128), (16, 32), (1, 72), (1, 10**9), (7, 5)])
def test_format_round_trip_and_requantization_is_exact(block):
    w = torch.randn(40, 72, generator=torch.Generator().manual_seed(0)) * 3
    q, s = quantize_fp8(w, block)
    assert q.dtype == FP8_DTYPE and s.dtype == torch.float32
    back = dequantize_fp8(q, s, block)
    assert ((back - w).abs() <= w.abs() * 2 ** -4 + s.max() * 2 ** -9).all()  # e4m3: 3 mantissa bits
    for dtype in (torch.bfloat16, torch.float32):
        q2, _ = quantize_fp8(dequantize_fp8(q, s, block).to(dtype), block)
        assert torch.equal(q2.view(torch.uint8), q.view(torch.uint8))


def test_checkpoint_stream_merges_fp8_pairs_in_either_order():
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(8, 6, generator=gen)
    q, s = quantize_fp8(w, (4, 4))
    tensor_q, tensor_s = w.abs().max() / 448, (w.abs().amax(1) / 448)
    stream = [("a.weight_scale_inv", s), ("a.weight", q), ("n.weight", w), ("b.weight", q),
              ("b.weight_scale_inv", s), ("c.weight", (w / tensor_q).to(FP8_DTYPE)), ("c.weight_scale", tensor_q),
              ("c.input_scale", torch.tensor(1.0)), ("d.weight", (w / tensor_s[:, None]).to(FP8_DTYPE)),
              ("d.weight_scale", tensor_s[:, None])]
    out = dict(dequantized(iter(stream), (4, 4)))
    assert sorted(out) == ["a.weight", "b.weight", "c.weight", "d.weight", "n.weight"]
    assert torch.equal(out["a.weight"], dequantize_fp8(q, s, (4, 4))) and torch.equal(out["n.weight"], w)
    for name in ("c.weight", "d.weight"):
        torch.testing.assert_close(out[name], w, atol=0.1, rtol=0.07)
    with pytest.raises(ValueError, match="no '<name>_scale_inv'"):
        list(dequantized(iter([("a.weight", q)]), (4, 4)))
    with pytest.raises(ValueError, match="FP8 scales for"):
        list(dequantized(iter([("a.weight_scale_inv", s)]), (4, 4)))
    with pytest.raises(ValueError, match="does not fit its scales"):
        list(dequantized(iter([("a.weight", q), ("a.weight_scale_inv", s)]), (2, 4)))


# -- loading and conversion -----------------------------------------------------------------
def test_converted_checkpoint_is_hf_block_fp8(fp8_dir):
    from safetensors import safe_open

    qc = json.loads((Path(fp8_dir) / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "fp8" and qc["weight_block_size"] == BLOCK and qc["activation_scheme"] == "dynamic"
    assert {"lm_head", "model.word_embeddings", "model.layers.1.mlp.gate"} <= set(qc["modules_to_not_convert"])
    assert (Path(fp8_dir) / "tokenizer.json").is_file()
    with safe_open(str(Path(fp8_dir) / "model.safetensors"), "pt") as f:
        q = f.get_tensor("model.layers.0.attention.dense.weight")
        s = f.get_tensor("model.layers.0.attention.dense.weight_scale_inv")
        assert q.dtype == FP8_DTYPE and tuple(s.shape) == (128 // 32, 128 // 32)
        assert f.get_tensor("lm_head.weight").dtype == torch.float32
        assert "lm_head.weight_scale_inv" not in f.keys()


def test_fp8_checkpoint_loads_like_its_dequantized_copy(fp8_dir, tmp_path):
    from safetensors.torch import save_file

    from diffulex.models.weights import iter_checkpoint

    plain = tmp_path / "dequantized"
    shutil.copytree(fp8_dir, plain)
    (plain / "model.safetensors").unlink()
    save_file({n: t.contiguous() for n, t in iter_checkpoint(fp8_dir)}, str(plain / "model.safetensors"))
    cfg = json.loads((plain / "config.json").read_text())
    del cfg["quantization_config"]
    (plain / "config.json").write_text(json.dumps(cfg))

    as_none = runner(fp8_dir, quantization="none")
    assert as_none.config.quantization.weights.value == "none" and not fp8_modules(as_none.model)
    torch.testing.assert_close(logits(as_none.model), logits(runner(str(plain)).model), atol=0, rtol=0)


def test_fp8_checkpoint_requantizes_to_its_own_bytes(fp8_dir):
    from safetensors import safe_open

    r = runner(fp8_dir)  # auto: the checkpoint's format and tiles
    assert r.config.quantization.weights.value == "fp8" and r.config.quantization.weight_block_size == BLOCK
    layer = r.model.model.layers[0]
    with safe_open(str(Path(fp8_dir) / "model.safetensors"), "pt") as f:
        def get(n):
            return f.get_tensor(f"model.layers.0.{n}")
        assert torch.equal(layer.attention.query_key_value.weight.view(torch.uint8),
                           get("attention.query_key_value.weight").view(torch.uint8))
        gate_up = torch.cat([get("mlp.gate_proj.weight"), get("mlp.up_proj.weight")])
        assert torch.equal(layer.mlp.gate_up_proj.weight.view(torch.uint8), gate_up.view(torch.uint8))
        assert torch.equal(layer.mlp.down_proj.weight.view(torch.uint8), get("mlp.down_proj.weight").view(torch.uint8))
        torch.testing.assert_close(layer.mlp.down_proj.weight_scale_inv, get("mlp.down_proj.weight_scale_inv"))


def test_quantize_at_load_equals_convert_then_load(trained, fp8_dir):
    from diffulex import Diffulex, SamplingParams

    at_load = runner(trained, quantization={"weights": "fp8", "weight_block_size": BLOCK})
    converted = runner(fp8_dir)
    a, b = fp8_modules(at_load.model), fp8_modules(converted.model)
    assert a.keys() == b.keys() and len(a) == 16
    for name in a:
        assert torch.equal(a[name].weight.view(torch.uint8), b[name].weight.view(torch.uint8)), name
    prompts, sp = ["Solve: 12 + 30.", "Solve: 871 + 136."], SamplingParams(temperature=0.0, max_tokens=16)
    texts = []
    for kwargs in ({"quantization": {"weights": "fp8", "weight_block_size": BLOCK}}, {}):
        path = trained if kwargs else fp8_dir
        with Diffulex(path, **kwargs) as llm:
            texts.append([t.text for t in llm.generate(prompts, sp).trajectories])
    assert texts[0] == texts[1]


def test_ignored_and_builtin_modules_stay_full_precision(trained, tmp_path):
    r = runner(trained, quantization={"weights": "fp8", "ignore": ["dense", "model.layers.0.*"]})
    names = set(fp8_modules(r.model))
    assert names and not any(n.endswith(".dense") or n.startswith("model.layers.0.") for n in names)
    model = r.model
    assert model.lm_head.weight.dtype == torch.float32 and model.model.word_embeddings.weight.dtype == torch.float32
    assert model.model.layers[1].mlp.gate.weight.dtype == torch.float32  # the MoE router
    # A checkpoint's modules_to_not_convert (here: written by convert --ignore) stays full precision.
    out = tmp_path / "fp8-ignore"
    qc = convert(trained, out, BLOCK, ignore=["query_key_value"])
    assert "model.layers.2.attention.query_key_value" in qc["modules_to_not_convert"]
    model = runner(str(out)).model
    assert model.model.layers[2].attention.query_key_value.weight.dtype == torch.float32
    assert model.model.layers[2].attention.dense.weight.dtype == FP8_DTYPE
    from diffulex.config.quantization import ALWAYS_FULL_PRECISION, matches_module

    for name in ("model.decoder.layers.0.router.proj", "model.layers.0.mlp.shared_expert_gate", "lm_head",
                 "model.layers.3.mlp.gate"):
        assert any(matches_module(name, p) for p in ALWAYS_FULL_PRECISION), name
    assert not any(matches_module("model.layers.0.mlp.gate_up_proj", p) for p in ALWAYS_FULL_PRECISION)


def test_merged_lora_is_merged_before_quantization_and_unmerged_runs_on_fp8(trained, tmp_path):
    adapter = write_tiny_lora("llada2", trained, tmp_path / "adapter", ["query_key_value", "dense"])
    merged_fp8 = runner(trained, quantization="fp8", lora={"path": str(adapter)})
    merged = runner(trained, lora={"path": str(adapter)})
    from diffulex.quantization.apply import quantize_modules

    quantize_modules(merged.model, [128, 128], ["lm_head", "*embed*", "*router*", "gate"])
    a, b = fp8_modules(merged_fp8.model), fp8_modules(merged.model)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name].weight.view(torch.uint8), b[name].weight.view(torch.uint8)), name
    unmerged_fp8 = runner(trained, quantization="fp8", lora={"path": str(adapter), "merge": False})
    dense = unmerged_fp8.model.model.layers[0].attention.dense
    assert type(dense).__name__ == "LoRALinear" and dense.base.weight.dtype == FP8_DTYPE
    assert dense.lora_a.dtype == torch.float32
    x = torch.randn(5, 128, generator=torch.Generator().manual_seed(4))
    for layer in (dense, unmerged_fp8.model.model.layers[1].attention.query_key_value):  # row and column parallel
        base = layer.base
        w = dequantize_fp8(base.weight, base.weight_scale_inv, base.quant_block)
        expected = x @ w.T + (x @ layer.lora_a.T) @ layer.lora_b.T
        torch.testing.assert_close(layer(x), expected, atol=1e-4, rtol=1e-4)
    ref = logits(runner(trained, lora={"path": str(adapter), "merge": False}).model)
    got = logits(unmerged_fp8.model)
    assert (got - ref).abs().mean() < 0.05 * ref.abs().mean()


def test_tensor_parallel_shards_are_quantized_locally():
    w = torch.randn(24, 64, generator=torch.Generator().manual_seed(5))
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(6))
    parts = []
    for rank in range(2):
        layer = RowParallelLinear(64, 24, tp=TPGroup(rank, 2, None))
        layer.weight.weight_loader(layer.weight, w)
        layer.quantize_weights((16, 16))
        assert tuple(layer.weight_scale_inv.shape) == (2, 2) and layer.quant_block == (16, 16)  # tiles of [24, 32]
        parts.append(layer.matmul(x[:, rank * 32:(rank + 1) * 32]))
    full = RowParallelLinear(64, 24)
    full.weight.weight_loader(full.weight, w)
    torch.testing.assert_close(parts[0] + parts[1], x @ w.T, atol=0.05 * (x @ w.T).abs().max().item(), rtol=0)
    with pytest.raises(ValueError, match="already quantized"):
        layer.weight.weight_loader(layer.weight, w)


# -- config rules ---------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    ({"quantization": {"weight_block_size": [128]}}, r"quantization.weight_block_size=\[128\] is invalid.*Fix"),
    ({"quantization": {"weight_block_size": [-1, 128]}}, "quantization.weight_block_size"),
    ({"quantization": {"weight_block_size": [1.5, 128]}}, "quantization.weight_block_size"),
    ({"weight_block_size": "128"}, "quantization.weight_block_size"),
    ({"quantization": "int4"}, "quantization.weights='int4' is invalid.*'fp8'"),
    ({"quantization": {"ignore": "dense"}}, "quantization.ignore='dense' is invalid"),
    ({"quantization": {"bits": 8}}, "quantization: .*the fields of QuantizationConfig"),
    ({"dtype": "float8_e4m3fn"}, "model.dtype=.*quantization.weights='fp8'"),
])
def test_config_errors_name_the_field_and_the_fix(trained, kwargs, match):
    with pytest.raises(ValueError, match=match):
        Config(trained, **kwargs)


@pytest.mark.parametrize("qc,match", [
    ({"quant_method": "gptq", "bits": 4}, "quant_method='gptq' is not supported.*Fix"),
    ({"quant_method": "fp8", "fmt": "e5m2"}, "fmt='e5m2' is not supported"),
    ({"quant_method": "fp8", "weight_block_size": [128, 0]}, "weight_block_size"),
])
def test_unsupported_checkpoint_formats_fail_clearly(trained, tmp_path, qc, match):
    ck = tmp_path / "ck"
    shutil.copytree(trained, ck)
    cfg = json.loads((ck / "config.json").read_text())
    cfg["quantization_config"] = qc
    (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=match):
        Config(str(ck))


def test_group_forms_and_notes(trained, fp8_dir):
    assert Config(trained).quantization.weights.value == "none"  # auto on a full-precision checkpoint
    c = Config(trained, quantization={"weights": "fp8"}, weight_block_size=[1, 0])
    assert c.quantization.weights.value == "fp8" and c.quantization.weight_block_size == [1, 0]
    c = Config(fp8_dir, quantization={"weights": "fp8", "weight_block_size": [128, 128]})
    assert c.quantization.weight_block_size == BLOCK
    assert any(ch["key"] == "quantization.weight_block_size" for ch in c.notes.changes)
    assert c.to_dict()["quantization"] == {"weights": "fp8", "weight_block_size": BLOCK, "ignore": []}


def test_weight_cache_keys_on_the_weight_format(trained):
    from diffulex.engine.weight_cache import WeightCache

    keys = {WeightCache.key_for(Config(trained, quantization=q), torch.device("cpu"), torch.float32)
            for q in ("none", "fp8", {"weights": "fp8", "weight_block_size": [1, 0]})}
    assert len(keys) == 3


# -- engine ---------------------------------------------------------------------------------
def test_fp8_generation_is_deterministic_and_logits_are_close(trained):
    from diffulex import Diffulex, SamplingParams

    full, fp8 = runner(trained).model, runner(trained, quantization="fp8").model
    ref, got = logits(full), logits(fp8)
    rel = (got - ref).abs().max() / ref.abs().max()
    assert 0 < rel < 0.05
    sp = SamplingParams(temperature=0.0, max_tokens=16)
    runs = []
    for _ in range(2):
        with Diffulex(trained, quantization="fp8") as llm:
            outs = llm.generate(["Solve: 12 + 30.", "Solve: 305 + 48."], sp)
            runs.append([(t.text, t.nfe) for t in outs.trajectories])
    assert runs[0] == runs[1]


@pytest.mark.parametrize("family", ["sdar_moe", "diffusion_gemma"])
def test_convert_builds_other_families_on_meta_and_loads_like_quantize_at_load(family, tiny_path, tmp_path):
    """MoE routers (DiffusionGemma's is a linear layer) stay full precision; both paths give the same weights."""
    src = tiny_path(family)
    qc = convert(src, tmp_path / "fp8", [16, 16])
    assert any(n.endswith(("mlp.gate", "router.proj")) for n in qc["modules_to_not_convert"])
    a = fp8_modules(runner(str(tmp_path / "fp8")).model)
    b = fp8_modules(runner(src, quantization={"weights": "fp8", "weight_block_size": [16, 16]}).model)
    assert a.keys() == b.keys() and a
    assert not any(n.endswith(("shared_expert_gate", "router.proj")) for n in a)
    for name in a:
        assert torch.equal(a[name].weight.view(torch.uint8), b[name].weight.view(torch.uint8)), name
