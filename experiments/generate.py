"""Compose a config, validate it and generate: ``python experiments/generate.py strategy=dmax model=llada2_mini``."""

import hydra
from omegaconf import DictConfig

from diffulex.integrations.experiment import run_experiment
from diffulex.integrations.cli import run_reporting_user_errors
from diffulex.integrations.hydra_store import register_configs
from diffulex.integrations.plugins import check_plugins

register_configs()  # the schemas must be in the ConfigStore before Hydra composes


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> float:
    return run_reporting_user_errors(run_experiment, cfg)  # a config mistake: one line, exit 2


if __name__ == "__main__":
    check_plugins()  # a launcher / sweeper preset whose plugin is missing: an install hint, exit 2
    main()
