"""Train a tiny model with Hydra: ``python experiments/train_tiny.py train=llada2 train.steps=200``.

A thin shell over ``diffulex.train`` (``python -m diffulex.train`` runs the same without Hydra):
the ``train`` group names the family, null fields keep that family's shipped settings.
"""

import dataclasses
import json
import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from diffulex.integrations.cli import run_reporting_user_errors
from diffulex.train import FAMILY_DEFAULTS, family_config, train

log = logging.getLogger("train_tiny")


@hydra.main(config_path="../conf", config_name="train_tiny", version_base=None)
def main(cfg: DictConfig) -> float:
    return run_reporting_user_errors(_train, cfg)  # a bad setting: one line, exit 2


def _train(cfg: DictConfig) -> float:
    fields = OmegaConf.to_container(cfg.train, resolve=True)
    family = fields.pop("family")
    overrides = {k: v for k, v in fields.items() if v is not None}
    if "size" in overrides:
        base = FAMILY_DEFAULTS[family]["size"]
        overrides["size"] = dataclasses.replace(base, **overrides["size"])
    run = family_config(family, **overrides)
    out = Path(cfg.out) if cfg.out else Path(HydraConfig.get().runtime.output_dir) / family
    train(run, out, log=lambda rec: log.info("%s", json.dumps(rec)))  # console and the run's log file
    log.info("weights and logs in %s", out)
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return records[-1]["mean_loss"]


if __name__ == "__main__":
    main()
