"""``WandbStepLogger``: decode steps aggregated over the batch, per-request and per-sample tables.

The engine emits :class:`~diffulex.engine.outputs.StepRecord`s to its observers and never
imports wandb; this observer is the bridge. Offline by default (``mode="offline"``; the
environment variable ``WANDB_MODE`` wins over the argument), so runs land on disk and
``wandb sync`` uploads them later. wandb's console banners are off (``silent``).

The number of chart keys does not grow with the number of prompts: one ``wandb.log`` row per
engine step, summed (or averaged) over the requests in that step::

    engine_step                      (x-axis of the step/* charts)
    step/requests                    requests that took part in the step
    step/tokens_decided  step/tokens_edited  step/tokens_remasked   (sums over the requests)
    step/masks_left      step/blocks_in_flight                      (sums after the step)
    step/decided_per_request         tokens_decided / requests
    step/time_s                      wall time of the batch step

At the end of each ``generate`` a ``requests`` ``wandb.Table`` gets one row per request (index,
NFE, TPF, tokens, finish reason, end-to-end seconds, text) and the run summary the
:meth:`GenerationOutputs.summary` numbers under ``run/``. An evaluation adds a ``samples``
table (prompt, output, extracted answer, reference, correct, NFE, TPF, latency) through
:meth:`log_samples`, and its metrics to the summary under ``eval/``.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import wandb

from diffulex.engine.observers import StepObserver

MODES = ("offline", "online", "disabled")
STEP_SUMS = ("tokens_decided", "tokens_edited", "tokens_remasked", "masks_left", "blocks_in_flight")
REQUEST_COLUMNS = ("index", "nfe", "tpf", "num_generated", "finish_reason", "e2e_s", "text")
SAMPLE_COLUMNS = ("id", "prompt", "output", "extracted", "reference", "correct", "num_tokens", "nfe", "tpf",
                  "latency_s", "finish_reason")


class WandbStepLogger(StepObserver):
    """Log decode steps to wandb (one wandb run per engine).

    Args:
        project: wandb project name.
        mode: ``offline`` (default), ``online`` or ``disabled``; ``WANDB_MODE`` overrides it.
        dir: where the ``wandb/`` folder goes; None: ``run_dir`` (the Hydra run directory).
        group: run group; None: ``sweep_name`` (unique per multirun: script and sweep directory).
        name: run name; None: ``job_name`` (the job's overrides), else wandb's own.
        tags: wandb tags.
        run_config: the run's config (the runners pass the normalized Config, the experiment
            node with prompts and sampling params, the task, and the rules' changes).
        run_dir, sweep_name, job_name: filled in by the runners; see above.
    """

    def __init__(self, project: str = "diffulex", mode: str = "offline", dir: Optional[str] = None,
                 group: Optional[str] = None, name: Optional[str] = None, tags: Sequence[str] = (),
                 run_config: Optional[dict[str, Any]] = None, run_dir: Optional[str] = None,
                 sweep_name: Optional[str] = None, job_name: Optional[str] = None) -> None:
        mode = os.environ.get("WANDB_MODE") or mode
        if mode not in MODES:
            raise ValueError(f"logger.mode={mode!r} is not a wandb mode; allowed {MODES} "
                             "(check the WANDB_MODE environment variable too)")
        self.dir = dir or run_dir or os.getcwd()
        os.makedirs(self.dir, exist_ok=True)
        self._step: Optional[dict[str, Any]] = None  # the engine step being aggregated
        self._requests: list[list[Any]] = []
        self.run = wandb.init(project=project, mode=mode, dir=self.dir, group=group or sweep_name,
                              name=name or job_name or None, tags=list(tags), config=run_config or {},
                              reinit="create_new", settings=wandb.Settings(silent=True, console="off"))
        self.run.define_metric("engine_step")
        self.run.define_metric("step/*", step_metric="engine_step")

    def on_step(self, request_id: int, record: Any) -> None:
        if self._step is not None and self._step["engine_step"] != record.step:
            self._flush_step()
        if self._step is None:
            self._step = {"engine_step": record.step, "requests": 0, "time_s": record.time_s,
                          **{k: 0 for k in STEP_SUMS}}
        s = self._step
        s["requests"] += 1
        s["tokens_decided"] += record.num_decided
        s["tokens_edited"] += record.num_edited
        s["tokens_remasked"] += record.num_remasked
        s["masks_left"] += record.masks_left
        s["blocks_in_flight"] += len(record.blocks)

    def _flush_step(self) -> None:
        s, self._step = self._step, None
        if s is None or self.run is None:
            return
        row = {"engine_step": s["engine_step"], "step/requests": s["requests"], "step/time_s": s["time_s"],
               "step/decided_per_request": s["tokens_decided"] / s["requests"]}
        row.update({f"step/{k}": s[k] for k in STEP_SUMS})
        self.run.log(row)

    def on_request_finished(self, trajectory: Any) -> None:
        t = trajectory
        self._requests.append([t.index, t.nfe, t.tpf, t.num_generated, t.finish_reason, t.e2e_s, t.text])

    def on_generate_end(self, outputs: Any) -> None:
        self._flush_step()
        if self._requests:
            self.run.log({"requests": wandb.Table(columns=list(REQUEST_COLUMNS), data=self._requests)})
            self._requests = []
        self.run.summary.update({f"run/{k}": v for k, v in outputs.summary().items()})

    def log_samples(self, samples: Sequence[dict[str, Any]], metrics: Optional[dict[str, float]] = None) -> None:
        """An evaluation's per-sample records as the ``samples`` table (and its metrics as ``eval/*``)."""
        self._flush_step()
        rows = [[s.get(c) for c in SAMPLE_COLUMNS] for s in samples]
        self.run.log({"samples": wandb.Table(columns=list(SAMPLE_COLUMNS), data=rows)})
        if metrics:
            self.run.summary.update({f"eval/{k}": v for k, v in metrics.items()})

    def close(self) -> None:
        """Finish the run (flushes the offline file); idempotent."""
        self._flush_step()
        run, self.run = self.run, None
        if run is not None:
            run.finish()
