"""``WandbStepLogger``: every decode step, request and run summary into a wandb run.

The engine emits :class:`~diffulex.engine.outputs.StepRecord`s to its observers and never
imports wandb; this observer is the bridge. Offline by default (``mode="offline"``; the
environment variable ``WANDB_MODE`` wins over the argument), so runs land on disk and
``wandb sync`` uploads them later.

Logged rows (one ``wandb.log`` per request per engine step), keyed by request id::

    request_<id>/tokens_decided  tokens_edited  tokens_remasked  masks_left
    request_<id>/tpf             (tokens decided so far / the request's forwards so far)
    request_<id>/step_time_s     request_<id>/blocks_in_flight   request_<id>/nfe
    engine_step                  (x-axis of the request_* charts)

On ``on_request_finished`` the run summary gains ``request_<index>/{nfe,tpf,num_generated,
finish_reason,e2e_s}``; on ``on_generate_end`` it gains the :meth:`GenerationOutputs.summary`
numbers under ``run/``. Within one ``generate`` of a fresh engine, request ids equal prompt
indices (what ``run_experiment`` does).
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import wandb

from diffulex.engine.observers import StepObserver

MODES = ("offline", "online", "disabled")


class WandbStepLogger(StepObserver):
    """Log decode steps to wandb (one wandb run per engine).

    Args:
        project: wandb project name.
        mode: ``offline`` (default), ``online`` or ``disabled``; ``WANDB_MODE`` overrides it.
        dir: where the ``wandb/`` folder goes; None: ``run_dir`` (the Hydra run directory).
        group: run group; None: ``sweep_name`` (the multirun's sweep directory name).
        name: run name; None: ``job_name`` (the job's overrides), else wandb's own.
        tags: wandb tags.
        run_config: the run's config (``run_experiment`` passes the normalized ``Config.to_dict()``).
        run_dir, sweep_name, job_name: filled in by ``run_experiment``; see above.
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
        self._decided: dict[int, int] = {}
        self.run = wandb.init(project=project, mode=mode, dir=self.dir, group=group or sweep_name,
                              name=name or job_name or None, tags=list(tags), config=run_config or {},
                              reinit="create_new")
        self.run.define_metric("engine_step")
        self.run.define_metric("request_*", step_metric="engine_step")

    def on_step(self, request_id: int, record: Any) -> None:
        decided = self._decided.get(request_id, 0) + record.num_decided
        self._decided[request_id] = decided
        key = f"request_{request_id}"
        self.run.log({
            "engine_step": record.step,
            f"{key}/tokens_decided": record.num_decided,
            f"{key}/tokens_edited": record.num_edited,
            f"{key}/tokens_remasked": record.num_remasked,
            f"{key}/masks_left": record.masks_left,
            f"{key}/tpf": decided / record.nfe if record.nfe else 0.0,
            f"{key}/step_time_s": record.time_s,
            f"{key}/blocks_in_flight": len(record.blocks),
            f"{key}/nfe": record.nfe,
        })

    def on_request_finished(self, trajectory: Any) -> None:
        key = f"request_{trajectory.index}"
        self.run.summary.update({f"{key}/nfe": trajectory.nfe, f"{key}/tpf": trajectory.tpf,
                                 f"{key}/num_generated": trajectory.num_generated,
                                 f"{key}/finish_reason": trajectory.finish_reason,
                                 f"{key}/e2e_s": trajectory.e2e_s})

    def on_generate_end(self, outputs: Any) -> None:
        self.run.summary.update({f"run/{k}": v for k, v in outputs.summary().items()})
        self._decided.clear()

    def close(self) -> None:
        """Finish the run (flushes the offline file); idempotent."""
        run, self.run = self.run, None
        if run is not None:
            run.finish()
