"""``DiffulexEngine``: construction and shutdown along the seed's load path.

config → world size → worker ranks spawned → tokenizer → rank-0 model runner → scheduler.
Any failure during construction (in this process or in a worker) calls :meth:`exit`,
which leaves no process, port or process group behind, and re-raises the original error.
"""

from __future__ import annotations

import collections
import gc
import logging
import threading
import time
import traceback
from typing import Any, Optional, Sequence, Union

import torch

from ..config import Config
from ..config.parallel import Launcher
from .components import EngineComponents
from .kwargs import split_engine_kwargs
from .prompts import prompt_token_ids
from .distributed import destroy_parallel_state, free_port, join_parallel_state
from .workers import WorkerError, WorkerGroup, Workers, join_launched_ranks
from ..sampling_params import SamplingParams
from .forbidden import forbidden_tokens
from .outputs import GenerationOutputs, StepRecord, Trajectory
from .batch import pack_batch
from .faults import NonFiniteLogits, check_progress, non_finite_error
from .overlap import Speculator
from .interrupts import StepInterrupted, deferred_sigint
from . import data_parallel

logger = logging.getLogger("diffulex.engine")


class DiffulexEngine:
    """An inference engine for one checkpoint, strategy and topology. Use ``with`` or ``exit()``."""

    def __init__(self, model: Any, *, components: Optional[EngineComponents] = None,
                 observers: Sequence[Any] = (), weight_cache: Any = None, **kwargs: Any) -> None:
        self._closed = False
        self.weight_cache = weight_cache  # a WeightCache shared by engines of one process (single rank)
        self.observers = list(observers)
        self.workers: Optional[Workers] = None
        self.runner: Any = None
        self.scheduler: Any = None
        self.parallel: Any = None
        config_kwargs, ignored = split_engine_kwargs(kwargs)
        if ignored:
            logger.warning("Diffulex: ignoring keyword(s) that are not config options: %s", ", ".join(ignored))
        self.ignored_kwargs = ignored
        try:
            if isinstance(model, Config):
                if config_kwargs:
                    raise ValueError(f"Diffulex(config, ...): pass options inside the Config, not as keywords "
                                     f"({sorted(config_kwargs)})")
                self.config = model
            else:
                self.config = Config(model, **config_kwargs)
            self.components = components or EngineComponents.for_config(self.config)
            self._start()
        except BaseException:
            self.exit()
            raise

    def _start(self) -> None:
        config = self.config
        world = config.world_size
        if config.runtime.overlap and world > 1:
            raise ValueError("runtime.overlap=true needs a single rank (world size 1): the overlapped "
                             "loop queues steps on one device; set runtime.overlap=null or false")
        runner_cls = self.components.model_runner
        if config.parallel.launcher == Launcher.ENV and world > 1:
            # torchrun started every rank; on ranks > 0 this serves rank 0, then ends the process.
            self.parallel, self.workers = join_launched_ranks(runner_cls, config)
        else:
            if world > 1 and config.parallel.master_port == 0:
                config.parallel.master_port = free_port(config.parallel.master_addr)
            if world > 1:
                self.workers = WorkerGroup.start(runner_cls, config, world)
                # Every worker must reach the rendezvous before rank 0 joins it, so that a
                # worker that dies early is reported instead of hanging the rendezvous.
                self.workers.wait("started", timeout_s=config.parallel.timeout_s)
            self.parallel = join_parallel_state(config, 0)
        self.tokenizer = config.tokenizer
        extra = {"weight_cache": self.weight_cache} if self.weight_cache is not None else {}
        self.runner = runner_cls(config, self.parallel, **extra)
        if self.workers is not None:
            self.workers.wait("ready")
        self.kv_cache_manager = self.components.kv_cache_manager(
            getattr(self.runner, "page_count", 0) or 1, config.cache.page_size, config.strategy.block_size,
            bool(config.cache.enable_prefix_caching))
        self.scheduler = self.components.scheduler(config, self.kv_cache_manager)
        self.sampler = self.components.sampler(config) if self.components.sampler is not None else None
        self._next_id = 0
        self._step_index = 0
        self._requests: dict[int, Any] = {}
        # Aborts asked for during a step (an observer) or from another thread wait here and are
        # applied between steps, so a step never loses a request's pages half-way.
        self._pending_aborts: collections.deque[int] = collections.deque()
        self._stepping = False
        self._owner = threading.get_ident()
        self._clamp_logged = False  # the max_tokens clamp is logged once per engine
        self._forbidden: Optional[torch.Tensor] = None
        self._generator = torch.Generator().manual_seed(config.runtime.seed)
        # The overlapped loop (runtime.overlap): it holds the guessed next step in flight, if any.
        self.speculator = Speculator(self) if self._overlap() else None
        self.prefill_time_s = 0.0  # wall time of steps in which some request ran its first forward
        self.decode_time_s = 0.0
        self._last_step_end = 0.0  # steps' times do not overlap (the overlapped loop queues early)
        # The loaded model, tokenizer and config are ~10^5 long-lived objects: a full garbage
        # collection walks them all (50-120 ms, every ~100 steps at batch 64). Freeze them out
        # of the collector once built; objects created later are collected as usual.
        gc.collect()
        gc.freeze()  # undone in exit()

    def _overlap(self) -> bool:
        """runtime.overlap resolved: None -> on CUDA with one rank; True needs one rank."""
        want = self.config.runtime.overlap
        if want is False:
            return False
        if self.workers is not None or self.config.world_size > 1:
            return False  # (True was refused in _start)
        return bool(want) or getattr(self.runner, "device", torch.device("cpu")).type == "cuda"

    @property
    def overlap_stats(self) -> Any:
        """The overlapped loop's counts (guesses used / discarded / not made), or None when it is off."""
        return self.speculator.stats if self.speculator is not None else None

    def _drop_spec(self) -> None:
        """Discard the guessed step in flight, if any (its outputs are never read; its pages freed)."""
        if self.speculator is not None and self.kv_cache_manager is not None:
            self.speculator.drop()

    # -- requests ---------------------------------------------------------------------------
    def add_request(self, prompt: Union[str, Sequence[int]], sampling_params: SamplingParams) -> int:
        """Queue one prompt (text or token ids); returns its request id."""
        self._check_open()
        return self._queue(self._new_request(prompt, sampling_params, self._next_id))

    def _new_request(self, prompt: Union[str, Sequence[int]], sampling_params: SamplingParams, req_id: int) -> Any:
        """Validate one prompt and build its request object; changes no engine state."""
        if not hasattr(self.components.request, "plan") or self.sampler is None:
            raise ValueError(f"strategy {self.config.strategy.name.value!r}: the request class "
                             f"{self.components.request.__name__} has no plan() or no sampler is registered "
                             "for it; pass components with a request class and a sampler")
        if not isinstance(sampling_params, SamplingParams):
            raise ValueError(f"sampling_params must be a SamplingParams, got {type(sampling_params).__name__}")
        check = getattr(self.components.request, "check_sampling_params", None)
        if check is not None:
            check(sampling_params)  # a strategy may refuse knobs it cannot honour
        ids, room = prompt_token_ids(prompt, self.tokenizer, self.config)
        limit = self.config.runtime.max_model_len
        if sampling_params.max_tokens > room:
            if not self._clamp_logged:
                logger.warning("max_tokens=%d is more than the room under max_model_len=%d for a prompt of %d "
                               "tokens; generating at most %d (logged once per engine)", sampling_params.max_tokens,
                               limit, len(ids), room)
                self._clamp_logged = True
            sampling_params = SamplingParams(**{**vars(sampling_params), "max_tokens": room})
        req = self.components.request(req_id, ids, sampling_params, self.config)
        req.generator = (torch.Generator().manual_seed(sampling_params.seed)
                         if sampling_params.seed is not None else self._generator)
        req.arrival_s, req.first_token_s, req.records = time.perf_counter(), None, []
        dp = self.config.parallel.data_parallel_size
        # Prefix-cache keys per data-parallel replica: a cached page's KV lives on the replica
        # that wrote it, so only requests pinned to that replica may reuse it.
        req.cache_namespace = f"dp{data_parallel.replica_of(req.req_id, dp)}/".encode() if dp > 1 else b""
        return req

    def _queue(self, req: Any) -> int:
        self._next_id = max(self._next_id, req.req_id + 1)
        self._requests[req.req_id] = req
        self.scheduler.add(req)
        return req.req_id

    def abort_request(self, req_id: int) -> bool:
        """Stop a queued or running request; False when it is unknown or already done.

        Safe at any moment: from an observer inside a step, or from another thread (a server's
        disconnect handler), the abort is queued and applied before the next step; from the
        engine's own thread between steps it applies at once. Its pages are freed either way.
        """
        req = self._requests.get(req_id)
        if req is None or getattr(req, "is_finished", False):
            return False
        if self._stepping or threading.get_ident() != self._owner:
            self._pending_aborts.append(req_id)
            return True
        return self.scheduler.abort(req_id)

    def _apply_pending_aborts(self) -> None:
        while self._pending_aborts:
            self.scheduler.abort(self._pending_aborts.popleft())

    def is_finished(self) -> bool:
        return self.scheduler.is_finished()

    def step(self) -> list[Any]:
        """Run one forward for the scheduled requests; returns the requests that finished."""
        self._check_open()
        self._apply_pending_aborts()
        self._stepping = True
        try:
            if self.workers is None:
                return self._step()
            try:
                with deferred_sigint():  # several ranks: a Ctrl-C waits for the step to end on all of them
                    return self._step()
            except StepInterrupted:
                self._broken = "a second Ctrl-C stopped a multi-rank step half-way (the ranks are out of step)"
                raise
        finally:
            self._stepping = False

    def _step(self) -> list[Any]:
        if self.speculator is not None:
            return self.speculator.step()
        scheduled = self.scheduler.schedule()
        if not scheduled:
            return []
        t0 = time.perf_counter()
        reqs = [r for r, _ in scheduled]
        plans = [p for _, p in scheduled]
        batch = pack_batch(reqs, plans, self.config.cache.page_size, self.kv_cache_manager)
        logits = self._forward(reqs, batch)
        self._forbidden_for(logits)
        try:
            decisions = self.sampler.decide(batch, logits, reqs, self._forbidden)
        except NonFiniteLogits as e:
            raise non_finite_error(reqs, e) from None
        prefill = any(req.nfe == 0 for req in reqs)
        for req, plan in zip(reqs, plans):
            req.after_forward(plan)
        return self._complete(reqs, plans, decisions, t0, prefill)

    def _forbidden_for(self, logits: torch.Tensor) -> torch.Tensor:
        """The [V] mask of tokens never sampled, built at the first forward (vocabulary of the logits)."""
        if self._forbidden is None:
            self._forbidden = forbidden_tokens(self.config, logits.shape[-1], logits.device)
        return self._forbidden

    def _complete(self, reqs: list[Any], plans: list[Any], decisions: list[Any], t0: float,
                  prefill: bool) -> list[Any]:
        """The host's part of a step after its decisions are read (its forward counted by
        ``after_forward``): commits, records, stops. ``prefill``: some request ran its first forward."""
        check_progress(reqs, plans, decisions)
        # From when the step was queued, or when the previous one ended if later (an overlapped step
        # is queued during the previous one): step times add up to at most the wall time.
        now = time.perf_counter()
        elapsed = now - max(t0, self._last_step_end)
        self._last_step_end = now
        if prefill:
            self.prefill_time_s += elapsed
        else:
            self.decode_time_s += elapsed
        finished = []
        prefix_caching = self.config.cache.enable_prefix_caching
        eos_ids = set(self.config.eos_token_ids)  # once per step, not per request
        for req, plan, decision in zip(reqs, plans, decisions):
            if prefix_caching and plan.write_end > plan.start:
                self.kv_cache_manager.commit(req.page_table, req.canvas, req.num_cached,
                                             getattr(req, "cache_namespace", b""))
            if self._apply(req, plan, decision, elapsed, eos_ids):
                finished.append(req)
        for req in finished:
            self.scheduler.finish(req)
        self._step_index += 1
        return finished

    def _forward(self, reqs: list[Any], batch: Any, patch: Any = None) -> torch.Tensor:
        """One forward of the packed batch on every rank; rank 0's logits [M, V].

        With data parallelism the requests are split over the replicas (each request pinned
        to replica ``req_id % dp``), see :mod:`diffulex.engine.data_parallel`. ``patch`` (one
        rank only: the overlapped loop) rewrites the token ids on the device before the forward.
        """
        if patch is not None:
            return self.runner.run(batch.input_ids, batch.positions, batch.meta, batch.extras, patch=patch)
        p = self.config.parallel
        if p.data_parallel_size > 1 and self.workers is not None:
            if data_parallel.can_split(batch):
                return data_parallel.forward_data_parallel(
                    self.runner, self.workers, p.tensor_parallel_size * p.expert_parallel_size,
                    p.data_parallel_size, reqs, batch)
        # One replica, or a batch that cannot be split: every rank runs the whole batch.
        return self.call_all("run", batch.input_ids, batch.positions, batch.meta, batch.extras)[0]

    def _apply(self, req: Any, plan: Any, decision: Any, elapsed: float, eos_ids: Optional[set] = None) -> bool:
        """Write the decision, commit blocks, check stop conditions; True when finished."""
        req.apply(decision)
        if decision.fills and req.first_token_s is None:
            req.first_token_s = time.perf_counter()
        blocks = req.block_states(plan)
        req.commit_ready_blocks(eos_ids if eos_ids is not None else set(self.config.eos_token_ids))
        record_all = self.config.runtime.record_trajectory
        record = StepRecord(
            step=self._step_index, time_s=elapsed, nfe=req.nfe, num_decided=len(decision.fills),
            num_edited=len(decision.edits), num_remasked=len(decision.remasks),
            masks_left=sum(b["masks"] for b in blocks), blocks=blocks,
            decided=list(decision.fills) if record_all else [], edited=list(decision.edits) if record_all else [],
            remasked=list(decision.remasks) if record_all else [])
        req.records.append(record)
        for obs in self.observers:
            obs.on_step(req.req_id, record)
        if not req.stopped:
            self._check_limits(req)
        if req.stopped:
            req.finish(req.finish_reason)
            req.finish_s = time.perf_counter()
        return req.stopped

    def _check_limits(self, req: Any) -> None:
        sp = req.sampling_params
        if not (sp.stop or sp.max_repetition_run or (sp.max_nfe is not None and req.nfe >= sp.max_nfe)):
            return  # no limit can trigger: skip building the decided output (every request, every step)
        done = req.decided_output()
        if sp.stop:
            text = self.tokenizer.decode(done, skip_special_tokens=True)
            if any(s in text for s in sp.stop):
                req._stop(done, "stop")
                return
        run = sp.max_repetition_run
        if run and len(done) >= run and len(set(done[-run:])) == 1:
            req._stop(done, "repetition")
            return
        if sp.max_nfe is not None and req.nfe >= sp.max_nfe:
            req._stop(done, "max_nfe")

    def generate(self, prompts: Sequence[Union[str, Sequence[int]]],
                 sampling_params: Union[SamplingParams, Sequence[SamplingParams], None] = None,
                 use_tqdm: bool = False) -> GenerationOutputs:
        """Decode every prompt to completion; trajectories in prompt order."""
        self._check_open()
        if isinstance(prompts, str) or not isinstance(prompts, Sequence) or len(prompts) == 0:
            raise ValueError("prompts must be a non-empty list of strings or token-id lists")
        params = sampling_params if sampling_params is not None else SamplingParams()
        if isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"got {len(params)} SamplingParams for {len(prompts)} prompts; pass one or one each")
        start = time.perf_counter()
        prefill0, decode0, steps0 = self.prefill_time_s, self.decode_time_s, self._step_index
        # Every prompt is validated before any is queued: a bad one leaves nothing behind.
        new = [self._new_request(prompt, sp, self._next_id + i) for i, (prompt, sp) in enumerate(zip(prompts, params))]
        ids = []
        try:
            for req in new:
                ids.append(self._queue(req))
            bar = _progress(len(ids), use_tqdm)
            while not self.is_finished():
                bar.update(len(self.step()))
                self._apply_pending_aborts()  # one that arrived during the last step ends the loop
            bar.close()
            self._drop_spec()
        except BaseException as exc:
            self._drop_spec()
            self._pending_aborts.clear()
            for req_id in ids:
                self.scheduler.abort(req_id)
                self._requests.pop(req_id, None)
            # The failed step's frames hold its tensors (shared-memory descriptors from the other
            # ranks): release them now, not when the caller drops the exception.
            seen, chain = set(), [exc]
            while chain:  # the exception and the ones it was raised from or during
                e = chain.pop()
                if e is not None and id(e) not in seen:
                    seen.add(id(e))
                    traceback.clear_frames(e.__traceback__)
                    chain += [e.__cause__, e.__context__]
            raise
        wall = time.perf_counter() - start
        trajs = [self._trajectory(i, self._requests.pop(req_id)) for i, req_id in enumerate(ids)]
        outputs = GenerationOutputs(trajectories=trajs, wall_time_s=wall,
                                 prefill_time_s=self.prefill_time_s - prefill0,
                                 decode_time_s=self.decode_time_s - decode0, num_steps=self._step_index - steps0)
        for obs in self.observers:
            for traj in trajs:
                obs.on_request_finished(traj)
            obs.on_generate_end(outputs)
        return outputs

    def _trajectory(self, index: int, req: Any) -> Trajectory:
        tokens = req.output_token_ids if req.output_token_ids is not None else req.decided_output()
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        for s in req.sampling_params.stop:
            if s in text:
                text = text[: text.index(s)]
        return Trajectory(index=index, prompt_token_ids=req.prompt_token_ids, token_ids=list(tokens), text=text,
                          finish_reason=req.finish_reason or "aborted", nfe=req.nfe, steps=req.records,
                          arrival_s=req.arrival_s, first_token_s=req.first_token_s,
                          finish_s=getattr(req, "finish_s", time.perf_counter()))

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this engine was shut down with exit(); build a new one")
        broken = getattr(self, "_broken", None) or getattr(self.workers, "broken", None)
        if broken:
            raise WorkerError(f"{broken}; this engine is closed, build a new one (exit() still cleans up)")

    def call_all(self, method: str, *args: Any) -> list[Any]:
        """Run ``runner.method(*args)`` on every rank; results in rank order."""
        if self.workers is None:
            return [getattr(self.runner, method)(*args)]
        self.workers.send(method, *args)
        try:
            mine = getattr(self.runner, method)(*args)
        finally:
            others = self.workers.wait("ok")
        return [mine, *others]

    @property
    def is_closed(self) -> bool:
        return self._closed

    def exit(self) -> None:
        """Shut down workers, free the cache and leave the process group. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for obs in getattr(self, "observers", []):
            try:
                obs.close()
            except Exception:
                logger.exception("observer %r failed to close", obs)
        runner, self.runner = self.runner, None
        workers, self.workers = self.workers, None
        parallel, self.parallel = self.parallel, None
        try:
            if workers is not None:
                workers.close()
        finally:
            try:
                if runner is not None:
                    runner.exit()
            finally:
                if parallel is not None:
                    destroy_parallel_state(parallel)
        self.speculator = None
        self.scheduler = None
        # An exception that escaped generate() keeps this engine alive through its frames: hold
        # nothing heavy once closed (the cache manager, the sampler, step tensors).
        self.kv_cache_manager = self.sampler = self._forbidden = None
        getattr(self, "_requests", {}).clear()  # absent when construction failed early
        del runner, workers, parallel
        # Undo _start's gc.freeze(): frozen objects are never collected, so anything of this
        # engine caught in a reference cycle (GPU tensors included) would outlive it, e.g.
        # across the jobs of a sweep. The next engine freezes its own objects again. Collect
        # now: the model's process groups hold the rendezvous store (a listening port, threads,
        # descriptors), which must be gone when exit() returns.
        gc.unfreeze()
        gc.collect()

    def __enter__(self) -> "DiffulexEngine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.exit()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            try:
                self.exit()
            except Exception:  # interpreter shutdown: modules (this logger too) may already be gone
                try:
                    logger.debug("engine cleanup at garbage collection failed", exc_info=True)
                except Exception:
                    pass


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="generate", unit="req")


def Diffulex(model: Any, **kwargs: Any) -> DiffulexEngine:
    """Build an engine: ``Diffulex("/path/to/ckpt", decoding_strategy="multi_bd", ...)``.

    Keywords naming a config field or a flat alias (see ``diffulex.config.aliases``) are
    applied; any other keyword is ignored with one warning that names it, except a near miss
    of an option name (``temprature=``, ``max_num_seq=``), which is a ValueError saying
    "did you mean ...".
    """
    return DiffulexEngine(model, **kwargs)
