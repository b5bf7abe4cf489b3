"""Docs describe the project as it is: no diary wording, and every doc the code points to exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted((REPO / "docs").glob("*.md")) + [REPO / "README.md", REPO / "experiments" / "README.md"]
DIARY = re.compile(r"\b(?:work period|review mend|this session|(?:first|second|third|fourth) session)\b", re.I)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_docs_are_a_current_report_not_a_diary(doc):
    hits = [line for line in doc.read_text().splitlines() if DIARY.search(line)]
    assert not hits, f"{doc.relative_to(REPO)} reads as a diary (history belongs in git): {hits[:3]}"


def test_every_doc_the_code_and_docs_name_exists():
    named = set()
    for path in [*REPO.glob("diffulex/**/*.py"), *REPO.glob("experiments/*.py"), *REPO.glob("conf/**/*.yaml"), *DOCS]:
        named |= set(re.findall(r"\bdocs/[\w-]+\.md\b", path.read_text(errors="ignore")))
    missing = sorted(n for n in named if not (REPO / n).is_file())
    assert not missing, f"referenced but missing: {missing}"


def test_the_test_set_up_installs_what_the_documented_commands_need():
    """README / experiments README name jupyter lab, summarize.py's PNG, lm-eval and the launchers."""
    import importlib.util

    for module in ("jupyterlab", "matplotlib", "lm_eval", "hydra_plugins.hydra_joblib_launcher",
                   "hydra_plugins.hydra_optuna_sweeper", "hydra_plugins.hydra_submitit_launcher"):
        assert importlib.util.find_spec(module) is not None, f"{module} missing: scripts/test.sh must install it"
