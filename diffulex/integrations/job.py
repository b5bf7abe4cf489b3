"""One Hydra job's bookkeeping, shared by generate.py and evaluate.py.

:class:`Job` finds the output directory (``experiment.output_dir``, else Hydra's run directory),
reads the job's identity (overrides, sweep group, job name) and writes ``results.json`` when the
job ends — also when it fails (status ``failed`` with the error), so sweep tables can list it.
:func:`what_ran` is the part of ``results.json`` that says what actually ran: the normalized
strategy and its resolved fields, and every value the config rules changed.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
from typing import Any, Optional

from omegaconf import DictConfig

RESULTS_FILE = "results.json"


def output_dir(cfg: DictConfig) -> str:
    """experiment.output_dir, else Hydra's run directory, else ./outputs."""
    if cfg.experiment.get("output_dir"):
        return str(cfg.experiment.output_dir)
    job = hydra_job()
    return job["output_dir"] if job else os.path.abspath("outputs")


def sweep_group(sweep_dir: str, job_name: str) -> str:
    """A wandb group unique per sweep: the script name and the sweep directory's last two parts
    (``evaluate/2026-12-02_16-03-11`` for Hydra's default ``multirun/DATE/TIME``)."""
    parts = [p for p in os.path.normpath(os.path.abspath(sweep_dir)).split(os.sep) if p][-2:]
    return f"{job_name}/{'_'.join(parts)}"


def hydra_job() -> Optional[dict[str, Any]]:
    """Run dir, sweep group, job name and overrides of the current Hydra job; None outside @hydra.main."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    return {"output_dir": hc.runtime.output_dir, "overrides": list(hc.overrides.task),
            "sweep_name": sweep_group(hc.sweep.dir, hc.job.name) if multirun else None,
            "job_name": hc.job.override_dirname or None, "job_num": hc.job.get("num") if multirun else None}


def what_ran(config: Any) -> dict[str, Any]:
    """The resolved model, family, strategy (every field), sampling mode and the rules' changes."""
    d = config.to_dict()
    ran = {"model": d["model"]["name"], "family": config.family, "sampling.mode": d["sampling"]["mode"]}
    ran.update({f"strategy.{k}" if k != "name" else "strategy": v for k, v in d["strategy"].items()})
    return {"ran": ran, "normalized": list(config.notes.changes)}


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


class Job:
    """``with Job(cfg) as job:`` — ``job.out``, ``job.info``, ``job.results`` (written on exit).

    Set ``job.worker = True`` in a torchrun rank > 0: only rank 0 writes the job's results.
    """

    def __init__(self, cfg: DictConfig) -> None:
        self.out = output_dir(cfg)
        os.makedirs(self.out, exist_ok=True)
        self.info = hydra_job() or {}
        self.results: dict[str, Any] = {"status": "failed", "overrides": self.info.get("overrides", []),
                                        "job_num": self.info.get("job_num")}
        self.worker = False

    def path(self, name: str) -> str:
        return os.path.join(self.out, name)

    def __enter__(self) -> "Job":
        return self

    def __exit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> bool:
        if exc is None:
            self.results["status"] = "ok"
        else:
            self.results["error"] = f"{exc_type.__name__}: {exc}"
        if not self.worker:
            self.results["resources"] = process_resources()
            with open(self.path(RESULTS_FILE), "w") as f:
                json.dump(self.results, f, indent=2, default=str)
        return False
