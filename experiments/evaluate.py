"""Evaluate a task through the engine: ``python experiments/evaluate.py task=add2 strategy=multi_bd``.

Writes results.json and samples.jsonl into Hydra's run directory and returns the metric
(``experiment.metric``, accuracy by default) to a sweeper. Tasks: ``conf/task/``.
"""

import hydra
from omegaconf import DictConfig

from diffulex.integrations.evaluation import run_evaluation
from diffulex.integrations.cli import run_reporting_user_errors
from diffulex.integrations.hydra_store import register_configs
from diffulex.integrations.plugins import check_plugins

register_configs()  # the schemas must be in the ConfigStore before Hydra composes


@hydra.main(config_path="../conf", config_name="evaluate", version_base=None)
def main(cfg: DictConfig) -> float:
    return run_reporting_user_errors(run_evaluation, cfg)  # a config mistake: one line, exit 2


if __name__ == "__main__":
    check_plugins()  # a launcher / sweeper preset whose plugin is missing: an install hint, exit 2
    main()
