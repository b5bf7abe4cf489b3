"""The shipped trained tiny models: held-out accuracy, the threshold trade-off, edits (CPU, greedy).

Numbers measured when the models were trained are in docs/models.md; the bounds here are the
issue's targets, on held-out problems (never trained on) large enough that a bound is not noise.
"""

from __future__ import annotations

import shutil

import pytest

from diffulex import Diffulex
from diffulex.tasks import held_out, is_held_out
from diffulex.tasks.evaluation import score
from diffulex.tiny import ensure_tiny_checkpoint, trained_families

N = 200


def _engine(family: str, **kw):
    return Diffulex(str(ensure_tiny_checkpoint(family, trained=True)), **kw)


def _score(family: str, subtask: str, n: int = N, **kw):
    llm = _engine(family, **kw)
    try:
        return score(llm, held_out(subtask, n, seed=11))
    finally:
        llm.exit()


def test_held_out_problems_are_never_trained_on():
    assert all(is_held_out(p.prompt) for sub in ("add2", "sub2", "add3", "mark") for p in held_out(sub, 50))


@pytest.mark.parametrize("subtask, bound", [("add2", 0.95), ("sub2", 0.95), ("add3", 0.85)])
def test_llada2_multi_bd_accuracy(subtask, bound):
    r = _score("llada2", subtask, decoding_strategy="multi_bd", block_size=32, accept_threshold=0.95)
    assert r.accuracy >= bound, r.row()


def test_llada_vanilla_accuracy():
    r = _score("llada", "add2", decoding_strategy="vanilla")
    assert r.accuracy >= 0.90, r.row()


def test_sdar_multi_bd_accuracy():
    r = _score("sdar", "add3", decoding_strategy="multi_bd", accept_threshold=0.95)
    assert r.accuracy >= 0.85, r.row()


@pytest.mark.parametrize("family, strategy", [("llada2", "multi_bd"), ("llada", "d2f")])
def test_lower_threshold_buys_tpf_at_an_accuracy_cost(family, strategy):
    """On `mark` (dependent answer digits) a low threshold decodes in parallel and breaks answers."""
    high = _score(family, "mark", decoding_strategy=strategy, accept_threshold=0.95)
    low = _score(family, "mark", decoding_strategy=strategy, accept_threshold=0.5)
    assert low.tpf > high.tpf and low.tpf >= 3, (high.row(), low.row())
    # Measured 1.00 -> 0.07 (llada2) and 0.93 -> 0.01 (llada) on 200 problems: a 0.3 margin is far
    # outside sampling noise (binomial sd at n=200 is below 0.04).
    assert low.accuracy <= high.accuracy - 0.3, (high.row(), low.row())
    plain = _score(family, "add2", decoding_strategy=strategy, accept_threshold=0.5)
    assert plain.accuracy >= 0.9  # independent digits lose nothing in parallel


@pytest.mark.parametrize("strategy", ["multi_bd", "dmax"])
def test_editing_makes_edits_at_an_aggressive_threshold(strategy):
    r = _score("llada2", "mark", decoding_strategy=strategy, sampling_mode="edit", accept_threshold=0.5)
    assert r.edits_per_100 > 0, r.row()


def test_families_without_a_trained_model_are_named_in_the_error():
    with pytest.raises(ValueError, match="llada2, llada, sdar"):
        ensure_tiny_checkpoint("dream", trained=True)
    assert trained_families() == ("llada2", "llada", "sdar")


def test_a_corrupted_shipped_file_fails_with_the_loaders_error(tmp_path):
    bad = tmp_path / "sdar"
    shutil.copytree(ensure_tiny_checkpoint("sdar", trained=True), bad)
    (bad / "model.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(ValueError, match=f"cannot read checkpoint shard {bad / 'model.safetensors'}"):
        Diffulex(str(bad))


def test_trained_preset_through_the_config_keywords():
    llm = Diffulex("", tiny="llada2", trained=True, decoding_strategy="multi_bd")
    try:
        assert llm.config.model.path == str(ensure_tiny_checkpoint("llada2", trained=True))
        out = llm.generate(["Solve: 12 + 30."])
        assert out.trajectories[0].text.split()[0] == "42"
    finally:
        llm.exit()


def test_tiny_cli_copies_the_trained_model_and_refuses_unknown(tmp_path, capsys):
    from diffulex.tiny.__main__ import main

    assert main(["--family", "sdar", "--trained", "--out", str(tmp_path / "s")]) == 0
    assert (tmp_path / "s" / "model.safetensors").read_bytes() == (
        ensure_tiny_checkpoint("sdar", trained=True) / "model.safetensors").read_bytes()
    assert main(["--family", "dream", "--trained", "--out", str(tmp_path / "d")]) == 2
    assert "families with one: llada2, llada, sdar" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("kw, message", [
    (dict(tiny="dream", trained=True), "model.trained"),
    (dict(trained=True), "model.trained"),
])
def test_trained_needs_a_family_that_has_one(kw, message):
    with pytest.raises(ValueError, match=message):
        Diffulex(str(ensure_tiny_checkpoint("llada2", trained=True)) if "tiny" not in kw else "", **kw)


def test_demo_prints_answers_and_a_summary_per_strategy():
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(repo / "experiments" / "demo.py"), "--n", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:2] == ["prompt", "ref"]
    assert any(line.startswith("Solve:") and " ok " in line for line in lines)
    summary = [line for line in lines if "accuracy" in line and "TPF" in line]
    assert len(summary) == 4 and "multi_bd 0.95 (llada2): accuracy 100.0%" in summary[0]


def test_a_missing_path_with_a_tiny_preset_is_an_error_and_writes_nothing(tmp_path):
    missing = tmp_path / "does" / "not" / "exist"
    for kw in (dict(tiny="llada2", trained=True), dict(tiny="llada")):
        with pytest.raises(ValueError, match="model.path"):
            Diffulex(str(missing), **kw)
    assert not (tmp_path / "does").exists()
