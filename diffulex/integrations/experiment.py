"""Run one experiment from a composed Hydra config (what experiments/generate.py calls).

compose → validated Config → engine → generate the configured prompts → print → save the
trajectories (JSONL) and the *normalized* config beside them → return the sweep objective
(tokens per forward).
"""

from __future__ import annotations

import logging
import os

from omegaconf import DictConfig, OmegaConf

from diffulex import Diffulex, SamplingParams
from diffulex.integrations.hydra_store import config_from_hydra

log = logging.getLogger(__name__)


def output_dir(cfg: DictConfig) -> str:
    """experiment.output_dir, else Hydra's run directory, else ./outputs."""
    if cfg.experiment.get("output_dir"):
        return str(cfg.experiment.output_dir)
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.output_dir
    except ValueError:  # composed without @hydra.main (notebooks, tests)
        return os.path.abspath("outputs")


def run_experiment(cfg: DictConfig) -> float:
    """Build the engine, generate, save; returns tokens per forward (the sweep objective)."""
    config = config_from_hydra(cfg)
    exp = cfg.experiment
    prompts = [str(p) for p in exp.prompts]
    params = SamplingParams(**OmegaConf.to_container(exp.sampling_params, resolve=True))
    out = output_dir(cfg)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.normalized.yaml"), "w") as f:
        f.write(OmegaConf.to_yaml(OmegaConf.create(config.to_dict())))
    with Diffulex(config) as llm:
        outputs = llm.generate(prompts, params, use_tqdm=len(prompts) > 1)
    for traj in outputs.trajectories:
        print(f"[{traj.index}] ({traj.finish_reason}, nfe={traj.nfe}) {traj.text!r}")
    path = os.path.join(out, "trajectories.jsonl")
    outputs.save_jsonl(path)
    summary = outputs.summary()
    print("summary: " + ", ".join(f"{k}={v:.4g}" for k, v in summary.items()))
    log.info("saved %s", path)
    return float(summary["tpf"])
