"""End to end on the tiny LLaDA2: the README's Python example, generate.py, outputs on disk."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from diffulex import Diffulex, SamplingParams
from diffulex.engine.outputs import GenerationOutputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(tiny_root):
    return {**os.environ, "DIFFULEX_TINY_ROOT": tiny_root, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled",
            "PYTHONPATH": ROOT}


def test_readme_python_example_runs_as_written(tiny_root, tmp_path):
    text = open(os.path.join(ROOT, "README.md")).read()
    block = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    script = tmp_path / "example.py"
    script.write_text(block)
    run = subprocess.run([sys.executable, str(script)], env=_env(tiny_root), capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip(), "the example prints the generated text"


def test_generate_script_runs_on_the_default_tiny_model(tiny_root, tmp_path):
    run = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "generate.py"),
                          "experiment.sampling_params.max_tokens=8", "strategy.block_size=8",
                          f"experiment.output_dir={tmp_path}", f"hydra.run.dir={tmp_path}"],
                         env=_env(tiny_root), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "summary:" in run.stdout and "nfe=" in run.stdout
    assert "summary:" in (tmp_path / "generate.log").read_text()  # results go through the logger: the run's log has them
    outputs = GenerationOutputs.load_jsonl(tmp_path / "trajectories.jsonl")
    # The default is the trained tiny LLaDA2: it answers the demo prompt, then EOS ends it.
    assert len(outputs) == 1 and outputs[0].text.split()[0] == "42" and outputs[0].finish_reason == "eos"
    assert "block_size: 8" in (tmp_path / "config.normalized.yaml").read_text()


def test_trajectory_records_rebuild_when_each_position_was_decided(tiny_path, tmp_path):
    with Diffulex(tiny_path("llada2"), block_size=8, page_size=8, accept_threshold=0.0) as llm:
        out = llm.generate([[5, 6, 7]], SamplingParams(max_tokens=12))
    traj = out[0]
    history = traj.position_history()
    # Every returned position was decided at exactly one recorded step, and the token matches.
    for i, tok in enumerate(traj.token_ids):
        assert history[3 + i]["token"] == tok
    assert sum(s.num_decided for s in traj.steps) >= len(traj.token_ids)
    assert traj.nfe == len(traj.steps) and traj.nfe < len(traj.token_ids)  # threshold 0: many per step
    # The first forward is the prefill; later ones are decode steps, timed apart.
    assert out.prefill_time_s > 0 and out.decode_time_s > 0 and out.num_steps == traj.nfe
    out.save_jsonl(tmp_path / "t.jsonl")
    assert GenerationOutputs.load_jsonl(tmp_path / "t.jsonl") == out


def test_limits_and_stop_conditions(tiny_path):
    with Diffulex(tiny_path("llada2"), block_size=8, page_size=8) as llm:
        out = llm.generate([[5, 6, 7]] * 2, [SamplingParams(max_tokens=40, max_nfe=3),
                                             SamplingParams(max_tokens=40, max_repetition_run=2)])
        assert out[0].finish_reason == "max_nfe" and out[0].nfe == 3
        assert out[1].finish_reason in ("repetition", "length")
        if out[1].finish_reason == "repetition":
            assert out[1].token_ids[-1] == out[1].token_ids[-2]
        ids = llm.generate([[5, 6, 7]], SamplingParams(max_tokens=16))[0]
        stop_text = llm.tokenizer.decode(ids.token_ids[2:4])
        stopped = llm.generate([[5, 6, 7]], SamplingParams(max_tokens=16, stop=[stop_text]))[0]
        if stop_text.strip():
            assert stopped.finish_reason == "stop" and stop_text not in stopped.text


def test_exit_then_generate_is_a_clear_error(tiny_path):
    llm = Diffulex(tiny_path("llada2"))
    llm.exit()
    with pytest.raises(RuntimeError, match="exit"):
        llm.generate(["hi"])


def _readme_commands() -> list[list[str]]:
    """The README's ``python experiments/<hydra script> ...`` lines, comments dropped, split as a shell would."""
    import shlex

    text = open(os.path.join(ROOT, "README.md")).read()
    lines = re.findall(r"^python (experiments/\S+\.py.*)$", text, re.M)
    return [shlex.split(line.split("  #")[0]) for line in lines]


def test_readme_hydra_commands_compose_as_written(tiny_root, tmp_path):
    """Each README command line names a real script and overrides that compose (``--cfg job``);
    the cheap ones run in full elsewhere (this file, tests/test_evaluation.py)."""
    commands = _readme_commands()
    assert len(commands) >= 7 and any(c[0] == "experiments/evaluate.py" for c in commands)
    for cmd in commands:
        script, args = cmd[0], cmd[1:]
        assert os.path.isfile(os.path.join(ROOT, script)), script
        if script == "experiments/summarize.py":
            continue  # argparse, reads a sweep directory: run by tests/test_experiments_multirun.py
        if "-m" in args:  # --cfg composes one job: the sweep's first point
            args = [a.split("=")[0] + "=" + a.split("=", 1)[1].split(",")[0] if "=" in a else a
                    for a in args if a != "-m"]
        run = subprocess.run([sys.executable, os.path.join(ROOT, script), *args, "--cfg", "job"],
                             env=_env(tiny_root), capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert run.returncode == 0, (cmd, run.stderr[-2000:])
