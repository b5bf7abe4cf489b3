"""Only diffulex/integrations/ may import hydra, omegaconf or wandb (DESIGN.md: arrows point down).

Pins both the runtime fact (importing the library, and building a Config, loads none of
them) and the source fact (no other module names them in an import).
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "diffulex"
FORBIDDEN = ("hydra", "omegaconf", "wandb")
# Modules that must import cleanly without the research-edge libraries (absent ones are skipped).
MODULES = ("diffulex", "diffulex.config", "diffulex.config.checkpoint", "diffulex.engine", "diffulex.strategy",
           "diffulex.sampling", "diffulex.models", "diffulex.layers", "diffulex.kernels", "diffulex.tiny")

_IMPORT = re.compile(rf"^\s*(from\s+({'|'.join(FORBIDDEN)})\b|import\s+[^#\n]*\b({'|'.join(FORBIDDEN)})\b)",
                     re.MULTILINE)


def test_importing_and_configuring_diffulex_loads_no_research_edge_library(tmp_path):
    script = textwrap.dedent(f"""
        import importlib, importlib.util, sys
        loaded = []
        for name in {MODULES!r}:
            parent = name.rpartition(".")[0]
            if parent and parent not in sys.modules:
                continue
            if importlib.util.find_spec(name) is not None:
                importlib.import_module(name)
                loaded.append(name)
        assert "diffulex.config" in loaded, loaded
        from diffulex.config import Config, ModelConfig
        Config(ModelConfig(tiny="llada2"))  # lazy imports: checkpoint, tiny writer, transformers
        bad = sorted(m for m in sys.modules if m.split(".")[0] in {FORBIDDEN!r})
        assert not bad, bad
        print("ok", loaded)
    """)
    env = {"PYTHONPATH": str(REPO), "DIFFULEX_TINY_ROOT": str(tmp_path), "HF_HUB_OFFLINE": "1",
           "WANDB_MODE": "disabled", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok")


def test_no_module_outside_integrations_imports_them():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "integrations":
            continue
        for match in _IMPORT.finditer(path.read_text()):
            offenders.append(f"diffulex/{rel}: {match.group(0).strip()}")
    assert not offenders, offenders


def test_the_pattern_catches_imports():
    for line in ("import wandb", "from omegaconf import OmegaConf", "import os, hydra", "  import hydra.utils"):
        assert _IMPORT.search(line), line
    for line in ("import hydrant", "# config from hydra", "x = 'wandb'"):
        assert not _IMPORT.search(line), line
