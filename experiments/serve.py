"""Serve one engine over HTTP (OpenAI-compatible): ``python experiments/serve.py strategy=multi_bd
+experiment.serve.port=8001``. Server options: ``experiment.serve.*`` (docs/serving.md)."""

import hydra
from omegaconf import DictConfig

from diffulex.integrations.cli import run_reporting_user_errors
from diffulex.integrations.hydra_store import register_configs
from diffulex.integrations.plugins import check_plugins
from diffulex.integrations.serve_app import run_server

register_configs()  # the schemas must be in the ConfigStore before Hydra composes


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    run_reporting_user_errors(run_server, cfg)  # a config mistake: one line, exit 2


if __name__ == "__main__":
    check_plugins()
    main()
