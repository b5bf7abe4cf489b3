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
