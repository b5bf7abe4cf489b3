"""Run one experiment from a composed Hydra config (what experiments/generate.py calls)."""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf

from diffulex.integrations.hydra_store import config_from_hydra

log = logging.getLogger(__name__)


def run_experiment(cfg: DictConfig) -> float:
    """Validate the engine config and report it; returns the sweep objective (0.0 for now).

    Building the engine, generating and logging steps come next; a bad config already
    fails here with Config's ValueError, before anything is loaded.
    """
    config = config_from_hydra(cfg)
    print(OmegaConf.to_yaml(OmegaConf.create(config.to_dict())), end="")
    return 0.0
