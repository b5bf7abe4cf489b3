"""Shared fixtures: tiny checkpoints written once per test session, offline HF."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> str:
    """A session-wide DIFFULEX_TINY_ROOT (also exported so subprocesses reuse it)."""
    root = str(tmp_path_factory.mktemp("tiny"))
    os.environ["DIFFULEX_TINY_ROOT"] = root
    return root


@pytest.fixture(scope="session")
def tiny_path(tiny_root):
    """tiny_path(family) -> path of that family's tiny checkpoint (written on first use)."""
    from diffulex.tiny import ensure_tiny_checkpoint

    return lambda family: str(ensure_tiny_checkpoint(family, root=tiny_root))
