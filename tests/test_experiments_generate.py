"""experiments/generate.py: prompts from the config, components and loggers from ``_target_`` nodes.

Pins: prompt sources and their errors; one run writes trajectories, the normalized config
and results.json and returns the chosen objective; a sampler class defined in the tests
replaces the engine's from the command line and changes the decoding; the wandb step
logger's offline run holds exactly the steps, summaries and config of the run.
"""

from __future__ import annotations

import json

import pytest
import yaml
from experiments_helpers import FAST, run_script

from diffulex.engine.outputs import GenerationOutputs
from diffulex.integrations.builders import build_components, build_observer
from diffulex.integrations.prompts import Prompt, load_prompts, prompt_sets
from diffulex.integrations.wandb_reader import read_offline_run
from diffulex.analysis.quality import exact_match


def test_prompt_sources(tmp_path):
    assert load_prompts(["a", "b"], None, "arith")[0] == [Prompt("a"), Prompt("b")]
    txt = tmp_path / "p.txt"
    txt.write_text("first\n\nsecond\n")
    assert [p.text for p in load_prompts(None, str(txt), "arith")[0]] == ["first", "second"]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "1+1=", "reference": 2}\n{"prompt": "hi"}\n')
    assert load_prompts(None, str(jsonl), None)[0] == [Prompt("1+1=", "2"), Prompt("hi")]
    shipped, source = load_prompts(None, None, "arith")
    assert "arith" in prompt_sets() and source.endswith("arith") and all(p.reference for p in shipped)


@pytest.mark.parametrize("kwargs,match", [
    (dict(prompts=["a"], prompt_file="x.txt"), "both set"),
    (dict(prompt_set="nope"), "not a shipped prompt set"),
    (dict(prompt_file="/no/such.txt"), "does not exist"),
    (dict(), "no prompts"),
])
def test_prompt_source_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_prompts(**kwargs)


def test_exact_match_counts_only_prompts_with_references():
    assert exact_match(["= 42.", "x", "y"], ["42", "7", None]) == 0.5
    assert exact_match([" 142", " 42 or 7", " -3"], ["42", "42", "-3"]) == 2 / 3  # the first number must equal it
    assert exact_match(["the cat sat"], ["cat"]) == 1.0  # text references: contained
    assert exact_match(["x"], [None]) is None


def test_bad_component_and_logger_paths_fail_with_the_key(tiny_path):
    from diffulex.config import Config, ModelConfig

    config = Config(ModelConfig(path=tiny_path("llada2")))
    with pytest.raises(ValueError, match="components.sampler='no.such.Sampler'"):
        build_components({"sampler": "no.such.Sampler"}, config)
    with pytest.raises(ValueError, match="no entry"):
        build_components({"samplr": None}, config)
    with pytest.raises(ValueError, match="observer hook"):
        build_observer({"_target_": "builtins.dict"})


def test_single_run_logs_every_step_to_an_offline_wandb_run(tiny_root, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_script("generate.py", ["logger=wandb", "experiment.metric=quality", "experiment.prompt_set=arith",
                                      "experiment.sampling_params.max_tokens=8", "strategy.block_size=8",
                                      f"hydra.run.dir={run_dir}"], tmp_path, tiny_root, WANDB_MODE="offline")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "prompt(s) from experiment.prompt_set=arith" in proc.stdout and "quality=" in proc.stdout
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "ok" and results["metric"] == "quality" and results["value"] == results["quality"]
    outputs = GenerationOutputs.load_jsonl(run_dir / "trajectories.jsonl")
    assert len(outputs) == results["num_prompts"] == 8
    normalized = yaml.safe_load((run_dir / "config.normalized.yaml").read_text())

    run = read_offline_run(str(run_dir))  # the logger defaults its dir to the Hydra run dir
    assert {k: run.config[k] for k in normalized} == normalized
    assert run.config["experiment"]["prompt_set"] == "arith"  # the experiment node is in the run config too
    # One row per engine step, summed over the batch: the chart keys do not grow with the prompts.
    steps = sorted({s.step for t in outputs for s in t.steps})
    rows = [r for r in run.history if "step/requests" in r]
    assert [r["engine_step"] for r in rows] == steps
    for r in rows:
        at = [s for t in outputs for s in t.steps if s.step == r["engine_step"]]
        assert r["step/requests"] == len(at)
        assert r["step/tokens_decided"] == sum(s.num_decided for s in at)
        assert r["step/masks_left"] == sum(s.masks_left for s in at)
        assert r["step/blocks_in_flight"] == sum(len(s.blocks) for s in at)
        assert r["step/time_s"] == pytest.approx(at[0].time_s)
    assert not [k for r in run.history for k in r if k.startswith("request_")]
    # Per-request results as one table.
    (table_row,) = [r for r in run.history if "requests/path" in r]
    assert table_row["requests/_type"] == "table-file" and table_row["requests/nrows"] == len(outputs)
    table = json.loads(next(run_dir.glob("wandb/*/files/" + table_row["requests/path"])).read_text())
    by_index = {row[0]: dict(zip(table["columns"], row)) for row in table["data"]}
    for traj in outputs:
        assert by_index[traj.index]["nfe"] == traj.nfe and by_index[traj.index]["text"] == traj.text
    assert run.summary["run/tpf"] == pytest.approx(outputs.tpf)
    assert run.summary["run/nfe"] == outputs.nfe


def test_sampler_class_from_the_tests_replaces_the_engines(tiny_root, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_script("generate.py", ["-m", *FAST, "strategy.accept_threshold=0.0",
                                      "components.sampler=null,experiments_plugins.LeftmostSampler",
                                      f"hydra.sweep.dir={sweep}"], tmp_path, tiny_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    default, leftmost = (GenerationOutputs.load_jsonl(sweep / j / "trajectories.jsonl") for j in "01")
    used = json.loads((sweep / "1" / "results.json").read_text())["component_classes"]["sampler"]
    assert used == "experiments_plugins.LeftmostSampler"
    # threshold 0: the built-in sampler fills many masks per forward
    assert sum(t.num_decided for t in default) / default.nfe > 1
    assert all(s.num_decided == 1 for t in leftmost for s in t.steps)  # one token per forward
    for traj in leftmost:  # ... strictly left to right
        history = traj.position_history()
        steps = [history[p]["decided_step"] for p in sorted(history)]
        assert steps == sorted(steps) and len(set(steps)) == len(steps)
