"""experiments/benchmark.py runs end to end on CPU at tiny sizes (so the script cannot rot)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("diffulex_benchmark", ROOT / "experiments" / "benchmark.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("model", ["llada2_mini", "llada_8b"])
def test_benchmark_tiny_cpu(tmp_path, model):
    bench = _load()
    rows = bench.main(["--device", "cpu", "--tiny", "--models", model, "--batches", "1,2", "--ks", "1,32",
                       "--prompt-len", "16", "--warmup", "1", "--measure", "2", "--vanilla-measure", "1",
                       "--workdir", str(tmp_path), "--out", str(tmp_path / "out")])
    fixed = [r for r in rows if r.get("engine") == "multi_bd"]
    vanilla = [r for r in rows if r.get("engine") == "vanilla"]
    assert len(fixed) == 4 and len(vanilla) == 4
    for r in vanilla + [r for r in fixed if r["k"] == 1]:
        assert r["tpf"] == pytest.approx(r["k"])  # the fixed schedule decides exactly k per forward
    for r in fixed:  # multi_bd, buffer 1: a filled block takes one more forward to commit
        assert 0 < r["tpf"] <= r["k"]
        assert r["fwd_s"] > 0 and r["step_s"] >= r["fwd_s"] * 0.5
    table = (tmp_path / "out" / "benchmark.md").read_text()
    assert "floor ratio" in table and model in table
    # U sits next to every floor ratio (the memory floor's and the compute floor's): "-" on the dense model
    moe = model == "llada2_mini"
    for r in fixed:
        assert (isinstance(r["u"], float) and 1 <= r["u"] <= 16) if moe else r["u"] == "-"
        assert r["flops"] > 0 and r["tokens"] >= r["batch"] and r["quantization"] == "none"
        assert (r["experts_s"] > 0 and r["experts_flops"] > 0) if moe else r["experts_s"] is None
    for header in ("| U | floor ratio |", "| U | fwd / compute floor |"):
        lines = table.splitlines()
        at = next(i for i, line in enumerate(lines) if header in line)
        col = [c.strip() for c in lines[at].split("|")].index("U")
        cells = [[c.strip() for c in line.split("|")][col] for line in lines[at + 2:at + 2 + len(fixed)]]
        assert all(c != "-" for c in cells) if moe else cells == ["-"] * len(fixed)


def test_benchmark_overlapped_loop_cpu(tmp_path):
    """--overlap on: the fixed-k sampler queues its fills on the device, so the measured steps are
    guesses used (k=1: a block completes every 32 forwards, the one miss in a block); the
    triton+graphs-sync row is absent on CPU, the rows say the overlap counts."""
    bench = _load()
    rows = bench.main(["--device", "cpu", "--tiny", "--models", "llada_8b", "--batches", "1", "--ks", "1",
                       "--prompt-len", "16", "--warmup", "2", "--measure", "6", "--no-vanilla", "--overlap", "on",
                       "--workdir", str(tmp_path), "--out", str(tmp_path / "out")])
    (r,) = [r for r in rows if r.get("engine") == "multi_bd"]
    assert r["tpf"] == pytest.approx(1) and r["hits"] >= 5 and r["misses"] <= 1, r
    assert "| overlap hits / misses |" in (tmp_path / "out" / "benchmark.md").read_text()


def test_benchmark_existing_checkpoint_cpu(tmp_path):
    """--checkpoint DIR: the folder's own weights (family and shape from its config.json), rows labelled
    by --models; bytes and U come from the loaded model; the folder is left in place."""
    import torch

    bench = _load()
    ckpt = bench.write_checkpoint("llada2_mini", tmp_path / "ck", torch.device("cpu"), torch.float32, tiny=True)
    rows = bench.main(["--device", "cpu", "--checkpoint", str(ckpt), "--models", "mine", "--batches", "1",
                       "--ks", "32", "--prompt-len", "16", "--warmup", "1", "--measure", "1", "--no-vanilla",
                       "--out", str(tmp_path / "out")])
    (r,) = rows
    assert r["model"] == "mine" and isinstance(r["u"], float)
    # the tiny llada2's weights (fp32): 109,120 values read every step, 6,144 per routed expert, 2 MoE layers
    kv = r["ctx"] + r["ntok"]
    assert r["bytes"] == pytest.approx(4 * 109120 + r["u"] * 4 * 6144 * 2 + kv * 3 * 2 * 2 * 16 * 4)
    assert (ckpt / "config.json").is_file()
    assert f"checkpoint {ckpt}" in (tmp_path / "out" / "benchmark.md").read_text()


def test_forced_routing_check_measures_kernels_not_routing_flips(tmp_path, monkeypatch):
    """--check's comparison (gpu_check.compare_backends_on_engine) on the tiny LLaDA2: the reference
    ops on both sides, the 'triton' side's routers fed a perturbed input (their choices flip, as
    bf16 rounding flips near ties). Free routing drifts; with the reference's routing forced the
    logits agree exactly, and that comparison decides. Also the byte and FLOP accounting of the
    loaded model, FP8 tensors counted at their own element size."""
    import torch

    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    import gpu_check
    from forced_routing import ForcedRouting, router_modules
    from roofline import flop_profile, weight_bytes

    from diffulex import Diffulex

    bench = _load()
    ckpt = bench.write_checkpoint("llada2_mini", tmp_path / "ck", torch.device("cpu"), torch.float32, tiny=True)
    state = {"perturbed": False}
    switch = gpu_check._switch

    def fake_switch(engine, backend):
        state["perturbed"] = backend == "triton"
        switch(engine, "torch")

    monkeypatch.setattr(gpu_check, "_switch", fake_switch)
    monkeypatch.setattr(gpu_check, "_set_kernels", lambda engine, backend, only=None: fake_switch(engine, backend))

    def perturb(mod, args):
        if state["perturbed"]:
            return (args[0] + 0.2 * args[0].roll(1, -1),) + args[1:]

    with Diffulex(str(ckpt), device="cpu", dtype="float32", kernels="torch", decoding_strategy="multi_bd",
                  block_size=32, buffer_size=1, page_size=32, max_model_len=256, enforce_eager=True) as llm:
        model = llm.runner.model
        with ForcedRouting(model) as forcer, pytest.raises(RuntimeError, match="nothing recorded"):
            forcer.force()
        handles = [m.register_forward_pre_hook(perturb) for m in router_modules(model)]
        res = gpu_check.compare_backends_on_engine(llm, prompt_len=16, batch=2, steps=2)
        for h in handles:
            h.remove()
        assert res["ok"] and "forced routing" in res["criterion"]
        assert res["max_rel_l2"] == 0.0 and res["min_top1_agreement"] == 1.0
        free = res["free_routing"]
        assert free["max_rel_l2"] > gpu_check.REL_TOL and free["max_routed_differently"] > 0.1
        assert free["max_flipped_under_forcing"] > 0.1
        assert "free routing (informative)" in gpu_check.summary(res)
        # accounting of the loaded model (fp32): see test_benchmark_existing_checkpoint_cpu
        assert weight_bytes(model) == (4 * 109120, 4 * 6144, 2)
        # per token: qkv 8192 + dense 4096 per layer x 3, dense MLP 24576, router 1024 + shared 6144 per MoE layer
        assert flop_profile(model) == dict(token=2 * 75776, logits_row=2 * 512 * 64, attention_pair=4 * 4 * 16 * 3,
                                           assignment=2 * (64 * 64 + 64 * 32))
        # FP8 weights as the layers' own quantization leaves them: 1 byte per element plus the
        # float32 scales (one 128 x 128 tile per matrix at these sizes)
        model.model.layers[1].attention.query_key_value.quantize_weights((128, 128))
        for layer in model.model.layers[1:]:
            layer.mlp.experts.quantize_weights((128, 128))
        always, per_expert, _ = weight_bytes(model)
        assert always == 4 * 109120 - 3 * 8192 + 4
        assert per_expert == 64 * 64 + 64 * 32 + 2 * 4


def test_moe_tflops_tiny_cpu(tmp_path):
    """experiments/moe_tflops.py's smoke run: the Triton fused MoE (interpreter) at tiny shapes."""
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from triton_interp import interpreted

    spec = importlib.util.spec_from_file_location("diffulex_moe_tflops", ROOT / "experiments" / "moe_tflops.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with interpreted():
        rows = mod.main(["--device", "cpu", "--tiny", "--tokens", "8,64", "--reps", "1", "--out", str(tmp_path)])
    assert [r["tokens"] for r in rows] == [8, 64]
    assert [r["slots"] for r in rows] == [5, 4]  # the shared slot up to FOLD_MAX_TOKENS (32) tokens, as the engine
    for r in rows:
        assert r["flops"] == 2 * r["tokens"] * r["slots"] * (2 * 32 * 64 + 64 * 32)
        assert 1 <= r["u"] <= 16 and r["ms"] > 0 and r["tflops"] > 0
    assert "| tokens |" in (tmp_path / "moe_tflops.md").read_text()


def test_gap_report_finds_idle_time_between_device_activities(monkeypatch):
    """The profile's gap report: span, busy and idle time, and the largest gap named by its neighbours
    (overlapping activities, and CPU-side events, are not idle gaps)."""
    import json

    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    from trace_gaps import gap_report

    events = [dict(ph="X", cat="kernel", name="a", ts=0, dur=10), dict(ph="X", cat="kernel", name="b", ts=12, dur=8),
              dict(ph="X", cat="gpu_memcpy", name="copy", ts=15, dur=2),  # inside b: no gap
              dict(ph="X", cat="cpu_op", name="aten::add", ts=20, dur=300),  # host side: ignored
              dict(ph="X", cat="kernel", name="sampler", ts=120, dur=5)]

    class Prof:
        def export_chrome_trace(self, path):
            with open(path, "w") as f:
                json.dump({"traceEvents": events}, f)

    text = gap_report(Prof())
    assert "span 0.12 ms, busy 0.02 ms, idle 0.10 ms in 2 gaps" in text
    assert "100.0: b -> sampler" in text
