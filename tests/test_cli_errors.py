"""The Hydra scripts as a user meets them: clean errors, presets-only option lists, lowercase values.

Pins: a config mistake prints one ``error: ...`` line (no traceback, no HYDRA_FULL_ERROR hint) and
exits 2, while results.json records it; a bug keeps its traceback; ``--help`` lists presets only
(no ``*_schema`` entries, which no longer compose as options) and shows enum values as users type them.
"""

from __future__ import annotations

import json

import pytest
from experiments_helpers import run_script

from diffulex.integrations.cli import raised_by_diffulex, run_reporting_user_errors


@pytest.mark.parametrize("script, args, message", [
    ("generate.py", ["strategy.accept_threshold=2"], "strategy.accept_threshold=2.0 is invalid"),
    ("generate.py", ["+strategy.typo=1"], "has no option(s) ['typo']"),
    ("evaluate.py", ["task=gsm8k"], "task gsm8k needs a data file: set task.path=<file>"),
])
def test_a_config_mistake_is_one_clean_line_and_exit_2(tiny_root, tmp_path, script, args, message):
    run_dir = tmp_path / "run"
    proc = run_script(script, [*args, f"hydra.run.dir={run_dir}"], tmp_path, tiny_root)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: ") and message in proc.stderr
    assert "Traceback" not in proc.stderr and "HYDRA_FULL_ERROR" not in proc.stderr
    assert proc.stderr.count(message) == 1 and message not in proc.stdout  # said once
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "failed" and message in results["error"]


def test_a_bug_keeps_its_traceback():
    def buggy(cfg):
        return [][1]

    with pytest.raises(IndexError):
        run_reporting_user_errors(buggy, None)

    def foreign(cfg):
        return int("not a number")  # a ValueError raised outside Diffulex is not a user error

    with pytest.raises(ValueError):
        run_reporting_user_errors(foreign, None)
    try:
        int("x")
    except ValueError as e:
        assert not raised_by_diffulex(e)


def test_help_lists_presets_only_with_lowercase_values(tiny_root, tmp_path):
    proc = run_script("generate.py", ["--help"], tmp_path, tiny_root)
    assert proc.returncode == 0
    groups = dict(line.split(": ", 1) for line in proc.stdout.split("== Config ==")[0].splitlines() if ": " in line)
    assert groups["strategy"] == "d2f, diffusion_gemma, dmax, fast_dllm_v2, multi_bd, native, vanilla"
    assert groups["sampling"] == "edit, naive" and groups["runtime"] == "default, eager"
    assert "_schema" not in proc.stdout and "schema" not in " ".join(groups)
    config = proc.stdout.split("== Config ==")[1]
    assert "name: multi_bd" in config and "mode: naive" in config and "MULTI_BD" not in config
    proc = run_script("generate.py", ["strategy=d2f_schema"], tmp_path, tiny_root)
    assert proc.returncode != 0 and "Could not find 'strategy/d2f_schema'" in proc.stderr
