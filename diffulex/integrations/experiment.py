"""Run one experiment from a composed Hydra config (what experiments/generate.py calls).

compose → validated Config → components and observer from ``_target_`` nodes → engine →
generate the configured prompts → log → save into the run directory → return the sweep
objective (``experiment.metric``: any ``GenerationOutputs.summary()`` key, or ``quality``).

Files written into the run directory (Hydra's, or ``experiment.output_dir``):
``config.normalized.yaml`` (the Config after every rule), ``trajectories.jsonl``, and
``results.json`` (``diffulex.integrations.job``) — status, overrides, what ran (the normalized
strategy and every value the rules changed), summary numbers, quality, the objective and the
process's resources after the engine exited. A failing job still writes ``results.json``.

One process runs every job of a basic-launcher multirun; each job builds its own engine and
``exit()`` releases it (workers, KV cache, process group, observers) before the next. Jobs that
share a checkpoint reuse its loaded weights through the process's :data:`WEIGHTS` cache
(``experiment.reuse_weights``), so a sweep reads the checkpoint once.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from omegaconf import DictConfig, OmegaConf

from diffulex import Diffulex, SamplingParams
from diffulex.analysis.quality import exact_match
from diffulex.engine import metrics
from diffulex.engine.outputs import GenerationOutputs
from diffulex.engine.weight_cache import WeightCache
from diffulex.integrations.builders import build_components, build_observer
from diffulex.integrations.hydra_store import config_from_hydra
from diffulex.integrations.job import Job, what_ran
from diffulex.integrations.prompts import load_prompts

log = logging.getLogger(__name__)


# One per process: Hydra's basic launcher runs every multirun job here, and jobs that share a
# checkpoint reuse its loaded weights instead of reading them again (experiment.reuse_weights).
WEIGHTS = WeightCache()


def objectives() -> list[str]:
    """Allowed values of ``experiment.metric``."""
    return [*metrics.summary(GenerationOutputs([])), "quality"]


def run_experiment(cfg: DictConfig) -> float:
    """Build, generate, save; returns ``experiment.metric`` (the sweep objective)."""
    with Job(cfg) as job:
        config = config_from_hydra(cfg)
        if config.parallel.launched_rank() > 0:
            job.worker = True
            _serve_as_worker(cfg, config)
        job.results.update(what_ran(config))
        return _run(cfg, config, job)


def _serve_as_worker(cfg: DictConfig, config: Any) -> None:
    """A torchrun rank > 0: serve rank 0 inside ``Diffulex(...)``, which ends this process (SystemExit).

    No prompts, logger, outputs or prints here: rank 0 does all of that for the job.
    """
    Diffulex(config, components=build_components(cfg.get("components"), config))
    raise RuntimeError("a torchrun worker rank returned from Diffulex(...); it should have ended its process")


def _run(cfg: DictConfig, config: Any, job: Job) -> float:
    exp = cfg.experiment
    metric = str(exp.get("metric") or "tpf")
    if metric not in objectives():
        raise ValueError(f"experiment.metric={metric!r} is unknown; choose one of {objectives()}")
    prompts, source = load_prompts(_plain(exp.get("prompts")), exp.get("prompt_file"), exp.get("prompt_set"))
    params = SamplingParams(**_plain(exp.sampling_params))
    out, results = job.out, job.results
    write_normalized_config(config, job.path("config.normalized.yaml"))
    components = build_components(cfg.get("components"), config)
    observer = build_observer(cfg.logger, run_config=run_config(cfg, config), run_dir=out,
                              sweep_name=job.info.get("sweep_name"), job_name=job.info.get("job_name"))
    log.info("%d prompt(s) from %s", len(prompts), source)
    cache = WEIGHTS if exp.get("reuse_weights", True) else None
    with Diffulex(config, components=components, observers=[observer], weight_cache=cache) as llm:
        outputs = llm.generate([p.text for p in prompts], params, use_tqdm=len(prompts) > 1)
    for traj in outputs.trajectories:
        log.info("[%d] (%s, nfe=%d) %r", traj.index, traj.finish_reason, traj.nfe, traj.text)
    outputs.save_jsonl(os.path.join(out, "trajectories.jsonl"))
    results["weights"] = {"reused": WEIGHTS.hits, "loaded": WEIGHTS.loads} if cache is not None else None
    summary = outputs.summary()
    quality = exact_match([t.text for t in outputs], [p.reference for p in prompts])
    log.info("summary: %s", ", ".join(f"{k}={v:.4g}" for k, v in summary.items())
             + ("" if quality is None else f", quality={quality:.4g}"))
    if metric == "quality" and quality is None:
        raise ValueError(f"experiment.metric=quality needs prompts with references; {source} has none "
                         "(use experiment.prompt_set=arith or a .jsonl file with 'reference' fields)")
    value = float(quality if metric == "quality" else summary[metric])
    results.update(summary=summary, quality=quality, metric=metric, value=value, num_prompts=len(prompts),
                   prompt_source=source, component_classes=_component_names(components))
    log.info("saved %s (%s=%.4g)", out, metric, value)
    return value


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _component_names(components: Any) -> dict[str, str]:
    """``module.Class`` per component; a class with bound arguments adds them: ``module.Class(k=2)``."""
    out = {}
    for k, v in vars(components).items():
        if v is None:
            continue
        cls = getattr(v, "func", v)  # functools.partial from instantiate(_partial_=True)
        args = ", ".join(f"{a}={b!r}" for a, b in getattr(v, "keywords", {}).items())
        out[k] = f"{cls.__module__}.{cls.__qualname__}" + (f"({args})" if args else "")
    return out


def write_normalized_config(config: Any, path: str) -> None:
    with open(path, "w") as f:
        f.write(OmegaConf.to_yaml(OmegaConf.create(config.to_dict())))


def run_config(cfg: DictConfig, config: Any) -> dict[str, Any]:
    """What a logger records as the run's config: the normalized Config plus the experiment-only
    nodes (prompts, sampling params, objective; the task for an evaluation) and the config rules'
    changes."""
    extra = {k: _plain(cfg.get(k)) for k in ("experiment", "task") if cfg.get(k) is not None}
    return {**config.to_dict(), **extra, "normalized": list(config.notes.changes)}
