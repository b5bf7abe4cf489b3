"""Launcher env: the same script started on every rank by torchrun (one node, or two "nodes").

The tests launch this file as the script (see ``_driver``): every rank builds
``Diffulex(...)``; rank 0 generates and writes its tokens, the other ranks must end inside
``Diffulex(...)`` with exit code 0 and never reach the script's next line. Greedy tokens
must equal a single-process run. The config errors of env mode are checked without any
process, by setting the launcher's variables.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

THIS = Path(__file__).resolve()
PROMPTS = [[(5 * i + 3 * j) % 200 + 20 for i in range(n)] for j, n in enumerate((5, 8, 13))]
KW = dict(dtype="float32", block_size=8, page_size=8, decoding_strategy="multi_bd",
          enable_prefix_caching=False, distributed_timeout_seconds=60)
FAMILY = "llada2"
MAX_TOKENS = 16
LAUNCH_TIMEOUT_S = 180
needs_torchrun = pytest.mark.skipif(importlib.util.find_spec("torch.distributed.run") is None,
                                    reason="torch.distributed.run (torchrun) is not available")
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                 "GROUP_RANK", "TORCHELASTIC_RUN_ID")


# -- the script torchrun starts on every rank ---------------------------------------------

def _driver(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--topology", default="{}", help="JSON of parallel keywords")
    ap.add_argument("--fail-rank1", action="store_true", help="the model runner raises on rank 1")
    args = ap.parse_args(argv)
    from diffulex import Diffulex, SamplingParams

    components = None
    if args.fail_rank1:
        from engine_helpers import FailOnRank1Runner  # tests/ is sys.path[0] when run as a script

        from diffulex.engine.components import EngineComponents

        components = EngineComponents.for_strategy("multi_bd").replace(model_runner=FailOnRank1Runner)
    rank = os.environ["RANK"]
    out = Path(args.out)
    try:
        llm = Diffulex(args.model, components=components, **KW, **json.loads(args.topology))
    except Exception as exc:  # the worker's construction error, re-raised on rank 0
        (out / f"rank{rank}.json").write_text(json.dumps(
            {"error": f"{type(exc).__name__}: {exc}", "notes": "".join(getattr(exc, "__notes__", []))}))
        return
    # Only the driver gets here: the other ranks ended inside Diffulex(...).
    with llm:
        outputs = llm.generate(PROMPTS, SamplingParams(max_tokens=MAX_TOKENS))
        info = {"launcher": llm.config.parallel.launcher.value, "world": llm.config.world_size,
                "ping": llm.call_all("ping")}
    info["tokens"] = [t.token_ids for t in outputs.trajectories]
    info["closed"] = llm.is_closed
    (out / f"rank{rank}.json").write_text(json.dumps(info))


# -- helpers ------------------------------------------------------------------------------

def _torchrun_argv(*launch: str, model: str, out: Path, extra: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *launch, str(THIS),
            "--model", model, "--out", str(out), *extra]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", WANDB_MODE="disabled",
               PYTHONPATH=os.pathsep.join(filter(None, [str(THIS.parents[1]), env.get("PYTHONPATH")])))
    return env


def _run_all(commands: list[list[str]]) -> list[subprocess.CompletedProcess]:
    """Start every command at once (the nodes of one job), wait for all, kill on timeout."""
    procs = [subprocess.Popen(c, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for c in commands]
    done = []
    try:
        for c, p in zip(commands, procs):
            stdout, _ = p.communicate(timeout=LAUNCH_TIMEOUT_S)
            done.append(subprocess.CompletedProcess(c, p.returncode, stdout))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return done


def _result(out: Path, runs: list[subprocess.CompletedProcess]) -> dict:
    logs = "\n".join(r.stdout[-4000:] for r in runs)
    assert all(r.returncode == 0 for r in runs), logs
    # Rank 0 wrote its result; rank 1 ended inside Diffulex(...) and never ran the script on.
    assert sorted(p.name for p in out.iterdir()) == ["rank0.json"], logs
    return json.loads((out / "rank0.json").read_text())


def _free_port() -> int:
    from diffulex.engine.distributed import free_port

    return free_port()


@pytest.fixture(scope="module")
def reference(tiny_path) -> list[list[int]]:
    """Greedy tokens of one process, one rank."""
    from diffulex import Diffulex, SamplingParams

    with Diffulex(tiny_path(FAMILY), **KW) as llm:
        return [t.token_ids for t in llm.generate(PROMPTS, SamplingParams(max_tokens=MAX_TOKENS)).trajectories]


# -- end to end ---------------------------------------------------------------------------

@needs_torchrun
@pytest.mark.timeout(LAUNCH_TIMEOUT_S * 2)
def test_one_node_tensor_and_data_parallel_match_one_rank(tiny_path, reference, tmp_path):
    """Two torchrun jobs at once (2 ranks each): TP=2 and DP=2; greedy tokens equal one rank's."""
    outs = {name: tmp_path / name for name in ("tp", "dp")}
    commands = []
    for name, topology in (("tp", {"tensor_parallel_size": 2}), ("dp", {"data_parallel_size": 2})):
        outs[name].mkdir()
        launch = ("--nnodes", "1", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                  "--master-port", str(_free_port()))
        commands.append(_torchrun_argv(*launch, model=tiny_path(FAMILY), out=outs[name],
                                       extra=("--topology", json.dumps(topology))))
    runs = _run_all(commands)
    for name, run in zip(outs, runs):
        got = _result(outs[name], [run])
        assert got["launcher"] == "env" and got["world"] == 2 and got["ping"] == [0, 1], name
        assert got["tokens"] == reference, name
        assert got["closed"] is True


@needs_torchrun
@pytest.mark.timeout(LAUNCH_TIMEOUT_S * 2)
def test_two_nodes_tensor_parallel_matches_one_rank(tiny_path, reference, tmp_path):
    """Two torchrun invocations, one rank each, joined by a static rendezvous (node ranks 0 and 1)."""
    port = str(_free_port())
    commands = [_torchrun_argv("--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(node),
                               "--master-addr", "127.0.0.1", "--master-port", port,
                               model=tiny_path(FAMILY), out=tmp_path,
                               extra=("--topology", json.dumps({"tensor_parallel_size": 2})))
                for node in (0, 1)]
    got = _result(tmp_path, _run_all(commands))
    assert got["launcher"] == "env" and got["ping"] == [0, 1]
    assert got["tokens"] == reference


@needs_torchrun
@pytest.mark.timeout(LAUNCH_TIMEOUT_S * 2)
def test_construction_failure_on_rank1_is_reraised_on_rank0(tiny_path, tmp_path):
    launch = ("--nnodes", "1", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
              "--master-port", str(_free_port()))
    got = _result(tmp_path, _run_all([_torchrun_argv(
        *launch, model=tiny_path(FAMILY), out=tmp_path,
        extra=("--topology", json.dumps({"data_parallel_size": 2}), "--fail-rank1"))]))
    assert got["error"] == "RuntimeError: boom in worker rank 1"
    assert "raised in worker rank 1" in got["notes"] and "engine_helpers.py" in got["notes"]


@needs_torchrun
@pytest.mark.timeout(LAUNCH_TIMEOUT_S * 2)
def test_hydra_experiment_under_torchrun_writes_outputs_on_rank0_only(tiny_root, tmp_path):
    """experiments/generate.py started by torchrun: rank 1 serves and ends; rank 0 alone prints and writes."""
    run_dir = tmp_path / "run"
    repo = THIS.parents[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), str(repo / "experiments" / "generate.py"),
           "parallel.tensor_parallel_size=2", "model.dtype=float32", "experiment.prompts=['Solve: 2 + 2 =',Hello]",
           "experiment.sampling_params.max_tokens=8", "strategy.block_size=8", f"hydra.run.dir={run_dir}"]
    env = dict(_env(), DIFFULEX_TINY_ROOT=tiny_root, PYTHONPATH=os.pathsep.join([str(repo), str(repo / "tests")]))
    env.pop("DIFFULEX_MODEL_ROOT", None)
    run = subprocess.run(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         timeout=LAUNCH_TIMEOUT_S)
    assert run.returncode == 0, run.stdout[-4000:]
    assert run.stdout.count("prompt(s) from") == 1, run.stdout[-4000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "ok" and results["num_prompts"] == 2, results


# -- config errors (no process) -----------------------------------------------------------

def _launched(monkeypatch, rank: int, world: int, local_rank: int = 0, local_world: int = 1) -> None:
    for name, value in (("RANK", rank), ("WORLD_SIZE", world), ("LOCAL_RANK", local_rank),
                        ("LOCAL_WORLD_SIZE", local_world), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", 29500)):
        monkeypatch.setenv(name, str(value))


def test_world_size_must_match_the_launcher(tiny_path, monkeypatch):
    from diffulex.config import Config

    _launched(monkeypatch, 0, 4, 0, 4)
    with pytest.raises(ValueError, match=r"parallel world size=2 .*WORLD_SIZE=4.*--nproc-per-node x --nnodes"):
        Config(tiny_path(FAMILY), tensor_parallel_size=2)
    cfg = Config(tiny_path(FAMILY), tensor_parallel_size=2, data_parallel_size=2)
    assert cfg.parallel.launcher.value == "env"
    # spawn ignores the launcher's variables; WORLD_SIZE=1 under auto spawns as before.
    assert Config(tiny_path(FAMILY), launcher="spawn").parallel.launcher.value == "spawn"
    _launched(monkeypatch, 0, 1)
    assert Config(tiny_path(FAMILY)).parallel.launcher.value == "spawn"


def test_launcher_value_and_environment_are_checked(tiny_path, monkeypatch):
    from diffulex.config import Config

    for name in LAUNCHER_VARS:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match=r"parallel.launcher='mpi' is invalid: allowed one of 'auto', 'spawn', "
                                         r"'env'.*Fix: set parallel.launcher"):
        Config(tiny_path(FAMILY), launcher="mpi")
    assert Config(tiny_path(FAMILY)).parallel.launcher.value == "spawn"
    with pytest.raises(ValueError, match=r"parallel.launcher='env' is invalid.*started by torchrun"):
        Config(tiny_path(FAMILY), launcher="env")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "two")
    with pytest.raises(ValueError, match=r"environment RANK='two' is invalid: allowed an integer"):
        Config(tiny_path(FAMILY), tensor_parallel_size=2)


def test_env_device_index_is_the_local_rank():
    from diffulex.engine.distributed import ParallelState

    assert ParallelState(rank=9, world_size=16, tp_size=8, dp_size=2, local_rank=1).device_index == 1
    assert ParallelState(rank=1, world_size=2, tp_size=2).device_index == 1  # spawn: one host


if __name__ == "__main__":
    _driver(sys.argv[1:])
