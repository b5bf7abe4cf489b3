"""Multirun sweeps: one process runs every job, summarize.py turns the sweep into one table.

Pins: a 2×2 command-line grid under the basic launcher runs all jobs in one process with
the wandb logger grouped by sweep directory; the engine releases its threads and child
processes between jobs and memory stays flat; summarize.py writes Markdown, CSV and PNG;
a job that fails mid-generate is reported (by Hydra and in the table) and leaves no process
behind; the version-controlled sweeps and the SLURM launcher preset compose.
"""

from __future__ import annotations

import csv
import importlib.util
import json

import pytest
import yaml
from experiments_helpers import FAST, REPO, run_script, session_processes
from hydra import compose, initialize_config_dir

from diffulex.integrations.hydra_store import register_configs
from diffulex.integrations.wandb_reader import read_offline_run


def test_grid_runs_in_one_process_and_summarizes(tiny_root, tmp_path):
    sweep = tmp_path / "sweep"
    # The `mark` prompts (dependent answer digits): there a low threshold fills more per forward.
    proc = run_script("generate.py", ["-m", *FAST, "experiment.prompts=null", "experiment.prompt_set=mark",
                                      "logger=wandb", "strategy=multi_bd,d2f",
                                      "strategy.accept_threshold=0.0,0.9", f"hydra.sweep.dir={sweep}"],
                      tmp_path, tiny_root, WANDB_MODE="offline")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not session_processes(proc.pid)
    results = [json.loads((sweep / str(j) / "results.json").read_text()) for j in range(4)]
    assert [r["status"] for r in results] == ["ok"] * 4
    # Jobs share the process and the checkpoint: only the first one reads the weights.
    assert [r["weights"] for r in results] == [{"reused": i, "loaded": 1} for i in range(4)]
    # Between jobs exit() released everything: no child, no extra thread, flat memory.
    res = [r["resources"] for r in results]
    assert all(r["children"] == 0 for r in res)
    assert res[-1]["python_threads"] == res[0]["python_threads"]
    assert res[-1]["os_threads"] <= res[0]["os_threads"] + 2
    assert res[-1]["rss_mb"] - res[0]["rss_mb"] < 150
    for j in range(4):
        # runs grouped by sweep: the script and the sweep directory's last two parts
        assert read_offline_run(str(sweep / str(j))).group == f"generate/{sweep.parent.name}_sweep"

    summary = run_script("summarize.py", [str(sweep)], tmp_path, tiny_root)
    assert summary.returncode == 0, summary.stderr
    header = summary.stdout.splitlines()[0]
    assert header.startswith("| job | strategy | strategy.accept_threshold | accuracy | tpf | mean_nfe | decode_tps")
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["strategy"], r["strategy.accept_threshold"]) for r in rows] == [
        ("multi_bd", "0.0"), ("multi_bd", "0.9"), ("d2f", "0.0"), ("d2f", "0.9")]
    for row, result in zip(rows, results):
        assert float(row["tpf"]) == pytest.approx(result["summary"]["tpf"])
        assert float(row["mean_nfe"]) == pytest.approx(result["summary"]["mean_nfe"])
    assert float(rows[0]["tpf"]) > float(rows[1]["tpf"])  # threshold 0 fills more per forward
    assert (sweep / "summary.png").stat().st_size > 0 and (sweep / "summary.md").is_file()


def test_failing_job_is_reported_and_leaks_nothing(tiny_root, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_script("generate.py", ["-m", *FAST, "components.sampler=experiments_plugins.ExplodingSampler,null",
                                      f"hydra.sweep.dir={sweep}"], tmp_path, tiny_root)
    assert proc.returncode != 0
    assert "ExplodingSampler: this job is meant to fail" in proc.stderr
    assert not session_processes(proc.pid)
    failed, ok = (json.loads((sweep / j / "results.json").read_text()) for j in "01")
    assert failed["status"] == "failed" and "meant to fail" in failed["error"]
    assert ok["status"] == "ok" and ok["resources"]["children"] == 0  # the next job still ran

    summary = run_script("summarize.py", [str(sweep)], tmp_path, tiny_root)
    assert summary.returncode == 1
    assert "1 of 2 job(s) failed" in summary.stdout and "meant to fail" in summary.stdout


@pytest.fixture(scope="module")
def compose_hydra(tiny_root):
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        yield lambda *o, name="config": compose(config_name=name, overrides=list(o), return_hydra_config=True)


@pytest.mark.parametrize("sweep,params,name", [
    ("thresholds_strategies", {"strategy": "d2f,multi_bd", "strategy.accept_threshold": "0.8,0.9,0.95"}, "config"),
    ("block_buffer", {"strategy.block_size": "8,16,32", "strategy.buffer_size": "1,4"}, "config"),
    ("tradeoff", {"task": "mark", "strategy": "multi_bd,d2f,dmax",
                  "strategy.accept_threshold": "0.3,0.5,0.6,0.7,0.8,0.85,0.9,0.95,0.99"}, "evaluate"),
])
def test_version_controlled_sweeps_compose(compose_hydra, sweep, params, name):
    from diffulex.integrations.hydra_store import config_from_hydra

    cfg = compose_hydra(f"sweep={sweep}", name=name)
    assert dict(cfg.hydra.sweeper.params) == params
    config_from_hydra(cfg)  # the base point of the grid is a valid config


def test_every_sweep_preset_is_tested():
    assert {p.stem for p in (REPO / "conf" / "sweep").glob("*.yaml")} == {"thresholds_strategies", "block_buffer", "tradeoff"}


def _has_module(name: str) -> bool:
    """find_spec of a submodule raises when its parent package is missing."""
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.skipif(not _has_module("hydra_plugins.hydra_submitit_launcher"),
                    reason="hydra-submitit-launcher not installed (pip install -e '.[launchers]')")
def test_slurm_launcher_preset_composes(compose_hydra):
    cfg = compose_hydra("hydra/launcher=slurm", "sweep=thresholds_strategies", "hydra.launcher.partition=gpu")
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 1 and launcher.timeout_min == 60


@pytest.mark.skipif(not _has_module("hydra_plugins.hydra_joblib_launcher"),
                    reason="hydra-joblib-launcher not installed (pip install -e '.[launchers]')")
def test_local_parallel_launcher_runs_the_jobs(tiny_root, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_script("evaluate.py", ["-m", "hydra/launcher=local", "task=mark", "task.limit=20",
                                      "strategy.accept_threshold=0.5,0.9", "experiment.progress=false",
                                      f"hydra.sweep.dir={sweep}"], tmp_path, tiny_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    values = [json.loads((sweep / j / "results.json").read_text())["value"] for j in "01"]
    assert values[0] < values[1]  # mark: the low threshold costs accuracy


@pytest.mark.skipif(not _has_module("hydra_plugins.hydra_optuna_sweeper"),
                    reason="hydra-optuna-sweeper not installed (pip install -e '.[launchers]')")
def test_optuna_search_maximizes_the_returned_metric(tiny_root, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_script("evaluate.py", ["-m", "hydra/sweeper=search", "hydra.sweeper.n_trials=3", "task=mark",
                                      "task.limit=20", "experiment.progress=false", f"hydra.sweep.dir={sweep}"],
                      tmp_path, tiny_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    values = [json.loads((sweep / str(j) / "results.json").read_text())["value"] for j in range(3)]
    assert best["best_value"] == max(values) and 0.3 <= best["best_params"]["strategy.accept_threshold"] <= 0.99


def test_a_missing_plugin_gets_an_install_hint(monkeypatch):
    from diffulex.integrations import plugins

    monkeypatch.setattr(plugins, "_installed", lambda module: False)
    hint = plugins.missing_plugin(["task=mark", "hydra/launcher=local"])
    assert "hydra-joblib-launcher" in hint and "pip install -e '.[launchers]'" in hint
    assert plugins.missing_plugin(["strategy=d2f"]) is None
    with pytest.raises(SystemExit) as e:
        plugins.check_plugins(["hydra/sweeper=search"])
    assert e.value.code == 2
