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
