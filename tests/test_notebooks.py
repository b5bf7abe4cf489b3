"""The notebooks run headlessly (nbclient, Agg backend) and draw their pictures.

Pins: trajectory_inspection runs live on the tiny model (Hydra compose API) and from a
saved trajectory file; sweep_analysis runs on a real two-job multirun directory.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from experiments_helpers import FAST, REPO, run_script
from nbclient import NotebookClient

NOTEBOOKS = REPO / "notebooks"


def execute(name: str, monkeypatch, **env: str) -> nbformat.NotebookNode:
    monkeypatch.setenv("MPLBACKEND", "Agg")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb


def images(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", []))


@pytest.fixture(scope="module")
def sweep_dir(tiny_root, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("nb_sweep")
    proc = run_script("generate.py", ["-m", *FAST, "strategy.accept_threshold=0.0,0.9",
                                      f"hydra.sweep.dir={tmp / 'sweep'}"], tmp, tiny_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "sweep"


def test_trajectory_notebook_live_run(tiny_root, monkeypatch):
    monkeypatch.delenv("DIFFULEX_TRAJECTORIES", raising=False)
    nb = execute("trajectory_inspection.ipynb", monkeypatch)
    assert images(nb) >= 1


def test_trajectory_notebook_from_saved_file(sweep_dir, monkeypatch):
    nb = execute("trajectory_inspection.ipynb", monkeypatch,
                 DIFFULEX_TRAJECTORIES=str(sweep_dir / "0" / "trajectories.jsonl"))
    assert images(nb) >= 1


def test_sweep_notebook(sweep_dir, monkeypatch):
    nb = execute("sweep_analysis.ipynb", monkeypatch, DIFFULEX_SWEEP_DIR=str(sweep_dir))
    assert images(nb) >= 2
    table = "".join(out["data"].get("text/markdown", "") for c in nb.cells for out in c.get("outputs", [])
                    if "data" in out)
    assert "strategy.accept_threshold" in table and "| ok |" in table
