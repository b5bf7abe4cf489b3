"""Run one experiment from a composed Hydra config (what experiments/generate.py calls).

compose → validated Config → components and observer from ``_target_`` nodes → engine →
generate the configured prompts → print → save into the run directory → return the sweep
objective (``experiment.metric``: any ``GenerationOutputs.summary()`` key, or ``quality``).

Files written into the run directory (Hydra's, or ``experiment.output_dir``):
``config.normalized.yaml`` (the Config after every rule), ``trajectories.jsonl``, and
``results.json`` — status, overrides, summary numbers, quality, the objective and the
process's resources after the engine exited. A failing job still writes ``results.json``
(status ``failed`` with the error) before re-raising, so sweep tables can list it.

One process runs every job of a basic-launcher multirun; each job builds its own engine
and ``exit()`` releases it (workers, KV cache, process group, observers) before the next.
Weights are loaded again per job: the engine owns its model runner and has no way to take
an already-loaded model, so a cache here would have nothing to hand over.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import threading
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from diffulex import Diffulex, SamplingParams
from diffulex.analysis.quality import exact_match
from diffulex.engine import metrics
from diffulex.engine.outputs import GenerationOutputs
from diffulex.engine.weight_cache import WeightCache
from diffulex.integrations.builders import build_components, build_observer
from diffulex.integrations.hydra_store import config_from_hydra
from diffulex.integrations.prompts import load_prompts

log = logging.getLogger(__name__)
RESULTS_FILE = "results.json"


def output_dir(cfg: DictConfig) -> str:
    """experiment.output_dir, else Hydra's run directory, else ./outputs."""
    if cfg.experiment.get("output_dir"):
        return str(cfg.experiment.output_dir)
    job = _hydra_job()
    return job["output_dir"] if job else os.path.abspath("outputs")


def _hydra_job() -> Optional[dict[str, Any]]:
    """Run dir, sweep name, job name and overrides of the current Hydra job; None outside @hydra.main."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    return {"output_dir": hc.runtime.output_dir, "overrides": list(hc.overrides.task),
            "sweep_name": os.path.basename(os.path.normpath(hc.sweep.dir)) if multirun else None,
            "job_name": hc.job.override_dirname or None, "job_num": hc.job.get("num") if multirun else None}


# One per process: Hydra's basic launcher runs every multirun job here, and jobs that share a
# checkpoint reuse its loaded weights instead of reading them again (experiment.reuse_weights).
WEIGHTS = WeightCache()


def objectives() -> list[str]:
    """Allowed values of ``experiment.metric``."""
    return [*metrics.summary(GenerationOutputs([])), "quality"]


def run_experiment(cfg: DictConfig) -> float:
    """Build, generate, save; returns ``experiment.metric`` (the sweep objective)."""
    out = output_dir(cfg)
    os.makedirs(out, exist_ok=True)
    job = _hydra_job() or {}
    results: dict[str, Any] = {"status": "failed", "overrides": job.get("overrides", []),
                               "job_num": job.get("job_num")}
    worker = False
    try:
        config = config_from_hydra(cfg)
        if config.parallel.launched_rank() > 0:
            worker = True
            _serve_as_worker(cfg, config)
        value = _run(cfg, config, out, job, results)
        results["status"] = "ok"
        return value
    except BaseException as e:
        results["error"] = f"{type(e).__name__}: {e}"
        raise
    finally:
        if not worker:  # under torchrun only rank 0 writes the job's results
            results["resources"] = process_resources()
            with open(os.path.join(out, RESULTS_FILE), "w") as f:
                json.dump(results, f, indent=2)


def _serve_as_worker(cfg: DictConfig, config: Any) -> None:
    """A torchrun rank > 0: serve rank 0 inside ``Diffulex(...)``, which ends this process (SystemExit).

    No prompts, logger, outputs or prints here: rank 0 does all of that for the job.
    """
    Diffulex(config, components=build_components(cfg.get("components"), config))
    raise RuntimeError("a torchrun worker rank returned from Diffulex(...); it should have ended its process")


def _run(cfg: DictConfig, config: Any, out: str, job: dict[str, Any], results: dict[str, Any]) -> float:
    exp = cfg.experiment
    metric = str(exp.get("metric") or "tpf")
    if metric not in objectives():
        raise ValueError(f"experiment.metric={metric!r} is unknown; choose one of {objectives()}")
    prompts, source = load_prompts(_plain(exp.get("prompts")), exp.get("prompt_file"), exp.get("prompt_set"))
    params = SamplingParams(**_plain(exp.sampling_params))
    with open(os.path.join(out, "config.normalized.yaml"), "w") as f:
        f.write(OmegaConf.to_yaml(OmegaConf.create(config.to_dict())))
    components = build_components(cfg.get("components"), config)
    observer = build_observer(cfg.logger, run_config=config.to_dict(), run_dir=out,
                              sweep_name=job.get("sweep_name"), job_name=job.get("job_name"))
    print(f"{len(prompts)} prompt(s) from {source}")
    cache = WEIGHTS if exp.get("reuse_weights", True) else None
    with Diffulex(config, components=components, observers=[observer], weight_cache=cache) as llm:
        outputs = llm.generate([p.text for p in prompts], params, use_tqdm=len(prompts) > 1)
    for traj in outputs.trajectories:
        print(f"[{traj.index}] ({traj.finish_reason}, nfe={traj.nfe}) {traj.text!r}")
    outputs.save_jsonl(os.path.join(out, "trajectories.jsonl"))
    results["weights"] = {"reused": WEIGHTS.hits, "loaded": WEIGHTS.loads} if cache is not None else None
    summary = outputs.summary()
    quality = exact_match([t.text for t in outputs], [p.reference for p in prompts])
    print("summary: " + ", ".join(f"{k}={v:.4g}" for k, v in summary.items())
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
    return {k: f"{v.__module__}.{v.__qualname__}" for k, v in vars(components).items() if v is not None}


def process_resources() -> dict[str, Any]:
    """This process's resident memory (MiB, Linux), OS threads, Python threads and live child processes."""
    rss_mb, os_threads = None, None
    try:
        with open("/proc/self/status") as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
        rss_mb = int(status["VmRSS"].split()[0]) / 1024
        os_threads = int(status["Threads"])
    except (OSError, KeyError, ValueError):  # not Linux: the numbers are optional
        pass
    return {"rss_mb": rss_mb, "os_threads": os_threads, "python_threads": threading.active_count(),
            "children": len(multiprocessing.active_children())}
