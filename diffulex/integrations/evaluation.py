"""Run one evaluation from a composed Hydra config (what experiments/evaluate.py calls).

compose → validated Config → the ``task`` node instantiated (``_target_``: a
:class:`diffulex.tasks.Task`) → engine → ``diffulex.tasks.evaluate`` in batches of
``experiment.batch_size`` → files → the objective ``experiment.metric`` (accuracy by default;
any key of ``EvalResult.metrics()``) for a sweeper.

Files in the run directory: ``config.normalized.yaml``, ``samples.jsonl`` (one line per sample:
id, prompt, output, extracted answer, reference, correct, tokens, NFE, TPF, latency, finish
reason), ``trajectories.jsonl`` when ``experiment.save_trajectories``, and ``results.json``
(status, overrides, what ran, the task, the metrics, the objective).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from diffulex import Diffulex
from diffulex.engine.outputs import GenerationOutputs
from diffulex.integrations.builders import build_components, build_observer, load_class
from diffulex.integrations.experiment import WEIGHTS, _plain, run_config, write_normalized_config
from diffulex.integrations.hydra_store import config_from_hydra
from diffulex.integrations.job import Job, what_ran
from diffulex.tasks import EvalResult, Task, evaluate

log = logging.getLogger(__name__)
SAMPLES_FILE = "samples.jsonl"


def build_task(node: Any) -> Task:
    """Instantiate the ``task`` node; its ``_target_`` must be a class with the Task methods."""
    if node is None or "_target_" not in node:
        raise ValueError("task needs a _target_ (pick a preset, e.g. task=add2, or give task._target_=my_pkg.MyTask)")
    load_class("task._target_", node["_target_"])
    task = instantiate(node, _convert_="all")
    missing = [m for m in ("samples", "is_correct", "extract", "describe") if not callable(getattr(task, m, None))]
    if missing:
        raise ValueError(f"task._target_={node['_target_']!r} lacks {missing}; subclass diffulex.tasks.Task")
    return task


def run_evaluation(cfg: DictConfig) -> float:
    """Evaluate, save, return ``experiment.metric``."""
    with Job(cfg) as job:
        config = config_from_hydra(cfg)
        job.results.update(what_ran(config))
        task = build_task(cfg.get("task"))
        job.results["task"] = task.describe()
        return _run(cfg, config, task, job)


def _run(cfg: DictConfig, config: Any, task: Task, job: Job) -> float:
    exp = cfg.experiment
    metric = str(exp.get("metric") or "accuracy")
    known = list(EvalResult(task={}).metrics())
    if metric not in known:
        raise ValueError(f"experiment.metric={metric!r} is unknown for an evaluation; choose one of {known}")
    write_normalized_config(config, job.path("config.normalized.yaml"))
    components = build_components(cfg.get("components"), config)
    observer = build_observer(cfg.logger, run_config=run_config(cfg, config), run_dir=job.out,
                              sweep_name=job.info.get("sweep_name"), job_name=job.info.get("job_name"))
    samples = task.samples()
    log.info("task %s: %d sample(s), strategy %s", task.name, len(samples), config.strategy.name.value)
    cache = WEIGHTS if exp.get("reuse_weights", True) else None
    with open(job.path(SAMPLES_FILE), "w", encoding="utf-8") as f, \
            Diffulex(config, components=components, observers=[observer], weight_cache=cache) as llm:
        def write(records: list[dict[str, Any]]) -> None:
            for r in records:
                f.write(json.dumps(r) + "\n")
            f.flush()

        result = evaluate(llm, task, batch_size=int(exp.get("batch_size") or 64),
                          progress=bool(exp.get("progress", True)), on_batch=write,
                          **(_plain(exp.get("sampling_params")) or {}))
        log_samples = getattr(observer, "log_samples", None)
        if callable(log_samples):
            log_samples(result.samples, result.metrics())
    if exp.get("save_trajectories"):
        GenerationOutputs(result.trajectories, wall_time_s=result.wall_time_s,
                          prefill_time_s=result.prefill_time_s, decode_time_s=result.decode_time_s).save_jsonl(job.path("trajectories.jsonl"))
    values = result.metrics()
    log.info("%s: accuracy %.4f (%d / %d), TPF %.3f, mean NFE %.2f, decode %.1f tok/s, end-to-end %.1f tok/s",
             task.name, values["accuracy"], result.correct, result.n, values["tpf"], values["mean_nfe"],
             values["decode_tps"], values["e2e_tps"])
    value = float(values[metric])
    job.results.update(metrics=values, metric=metric, value=value, num_samples=result.n)
    log.info("saved %s (%s=%.4g)", job.out, metric, value)
    return value
