"""Diffulex: fast inference for diffusion language models.

``from diffulex import Diffulex, SamplingParams``. The package root is light: the engine
(and torch-heavy modules) load on first access, and nothing here imports Hydra,
OmegaConf or wandb (those live in ``diffulex.integrations`` only).
"""

from __future__ import annotations

from typing import Any

from .sampling_params import SamplingParams

__version__ = "0.1.0"
__all__ = ["Config", "Diffulex", "DiffulexEngine", "SamplingParams", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("Diffulex", "DiffulexEngine"):
        from .engine import engine

        return getattr(engine, name)
    if name == "Config":
        from .config import Config

        return Config
    raise AttributeError(f"module 'diffulex' has no attribute {name!r}")
