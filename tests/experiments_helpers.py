"""Run experiments/generate.py in a subprocess for the experiment tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
# Small and fast: two prompts, 8 tokens, blocks of 8.
FAST = ["experiment.prompts=['Solve: 2 + 2 =',Hello]", "experiment.sampling_params.max_tokens=8",
        "strategy.block_size=8"]


def env(tiny_root: str, **extra: str) -> dict[str, str]:
    e = dict(os.environ, DIFFULEX_TINY_ROOT=tiny_root, HF_HUB_OFFLINE="1", WANDB_MODE="disabled",
             MPLBACKEND="Agg", PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS)]))
    e.pop("DIFFULEX_MODEL_ROOT", None)
    e.update(extra)
    return e


def run_script(script: str, args: list[str], cwd: Path, tiny_root: str, timeout: int = 240,
               **extra_env: str) -> subprocess.CompletedProcess:
    """Run experiments/<script> in its own session; ``.pid`` is the session id (see session_processes)."""
    proc = subprocess.Popen([sys.executable, str(REPO / "experiments" / script), *args],
                            env=env(tiny_root, **extra_env), cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    done.pid = proc.pid
    return done


def session_processes(sid: int) -> list[str]:
    """Live processes of session ``sid`` (Linux /proc): what a finished run left behind."""
    left = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        if int(fields[3]) == sid:  # fields after the command: state ppid pgrp session ...
            left.append(text[: text.rindex(")") + 1])
    return left
