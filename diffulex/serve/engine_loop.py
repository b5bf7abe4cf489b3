"""One engine, one thread: requests from the asyncio server join the running batch between steps.

The engine is single-threaded (``add_request`` is not thread-safe), so a dedicated thread owns
it. The server hands it work through a thread-safe inbox (``submit`` / ``abort``); the thread
drains the inbox between steps, runs ``engine.step()`` while anything is active, and hands
progress back to each job's ``asyncio.Queue`` with ``loop.call_soon_threadsafe``. A request the
engine refuses (``add_request``'s ValueError) fails alone as a 400; an error inside a step fails
the requests of that step (500) and the loop keeps serving.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from .protocol import APIError, GenerationRequest, from_value_error
from .streaming import CommittedText, canvas_snapshot, committed_tokens

log = logging.getLogger("diffulex.serve")


class QueueFull(Exception):
    """More requests in flight than ``max_queue``: the server answers 503."""


@dataclass
class Job:
    """One HTTP request: one or more engine requests (choices) sharing one event queue.

    Events put on ``events`` (in the asyncio loop): ``("accepted", None)`` once the engine queued
    every prompt, ``("delta", index, text, snapshot)``,
    ``("done", index, result)``, ``("error", None, APIError)``.
    """

    request: GenerationRequest
    events: asyncio.Queue
    aloop: asyncio.AbstractEventLoop
    req_ids: list[int] = field(default_factory=list)
    open: int = 0  # choices not finished yet
    cancelled: bool = False

    def emit(self, *event: Any) -> None:
        try:
            self.aloop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is closed (server shutting down)
            pass


@dataclass
class _Sub:
    job: Job
    index: int
    text: Optional[CommittedText]
    mode: str
    last_snapshot: Optional[str] = None


class EngineLoop:
    """Owns ``engine`` in a daemon thread; ``submit``/``abort`` are safe from any thread."""

    def __init__(self, engine: Any, max_queue: int = 256, idle_wait_s: float = 0.05) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue={max_queue} is invalid: allowed an int >= 1")
        self.engine = engine
        self.max_queue = max_queue
        self.idle_wait_s = idle_wait_s
        self._inbox: collections.deque = collections.deque()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._in_flight = 0  # engine requests submitted and not done (the bounded queue)
        self._active: dict[int, _Sub] = {}
        self._stop = False
        self.steps = 0
        self.aborted = 0  # engine requests aborted (client gone, error)
        self.peak_active = 0  # most engine requests in flight at once (continuous batching at work)
        self.error: Optional[BaseException] = None  # a fatal error that ended the thread
        tok = engine.tokenizer
        self._decode = lambda ids: tok.decode(ids, skip_special_tokens=True)
        self._mask_id = engine.config.model.mask_token_id
        self._thread = threading.Thread(target=self._run, name="diffulex-engine-loop", daemon=True)

    # -- any thread ----------------------------------------------------------------------
    def start(self) -> "EngineLoop":
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stop

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def submit(self, job: Job) -> None:
        """Queue a job; raises :class:`QueueFull` when ``max_queue`` requests are in flight."""
        n = len(job.request.prompts)
        with self._lock:
            if self._in_flight + n > self.max_queue:
                raise QueueFull(f"the server has {self._in_flight} requests in flight (max_queue="
                                f"{self.max_queue}); retry later")
            self._in_flight += n
        job.open = n
        self._inbox.append(("add", job))
        self._wake.set()

    def abort(self, job: Job) -> None:
        """Stop a job's requests (a client went away); their KV pages are freed before the next step."""
        job.cancelled = True
        self._inbox.append(("abort", job))
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop = True
        self._wake.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # -- the engine thread ---------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop:
                self._drain()
                if not self._active:
                    self._wake.wait(self.idle_wait_s)
                    self._wake.clear()
                    continue
                self._step()
        except BaseException as e:  # a bug in this loop: fail everyone rather than hang them
            log.exception("the engine loop stopped")
            self.error = e
            self._stop = True
        finally:
            for rid in list(self._active):
                self._fail(rid, APIError(503, "the server is shutting down", type="server_error",
                                         code="shutting_down"))

    def _drain(self) -> None:
        while self._inbox:
            kind, job = self._inbox.popleft()
            if kind == "add":
                self._add(job)
            else:
                for rid in list(job.req_ids):
                    if rid in self._active:
                        self._drop(rid)
                        self._done_one(job)

    def _add(self, job: Job) -> None:
        if job.cancelled:
            self._release(job.open)
            job.open = 0
            return
        req, ids = job.request, []
        try:
            for prompt in req.prompts:
                ids.append(self.engine.add_request(prompt, req.sampling_params))
        except Exception as e:
            for rid in ids:
                self.engine.abort_request(rid)
                self.engine._requests.pop(rid, None)
            self.engine._apply_pending_aborts()
            self._release(job.open)
            job.open = 0
            err = from_value_error(e, "messages" if req.kind == "chat" else "prompt") if isinstance(e, ValueError) \
                else APIError(500, f"the engine could not queue the request: {e}", type="server_error")
            job.emit("error", None, err)
            return
        job.req_ids = ids
        job.emit("accepted", None)
        stop = req.sampling_params.stop
        for index, rid in enumerate(ids):
            text = CommittedText(self._decode, stop) if req.stream else None
            self._active[rid] = _Sub(job, index, text, req.stream_mode)
        self.peak_active = max(self.peak_active, len(self._active))

    def _step(self) -> None:
        try:
            finished = self.engine.step()
        except Exception as e:
            log.exception("engine step failed; failing its requests")
            for rid in list(self._active):
                self._fail(rid, APIError(500, f"the engine failed: {e}", type="server_error", code="engine_error"))
            return
        self.steps += 1
        done = {r.req_id for r in finished}
        for rid, sub in list(self._active.items()):
            req = self.engine._requests.get(rid)
            if req is None:
                continue
            if rid in done:
                self._finish(rid, sub, req)
            elif sub.text is not None:
                self._progress(sub, req)

    def _progress(self, sub: _Sub, req: Any) -> None:
        delta = sub.text.update(committed_tokens(req))
        snap = None
        if sub.mode == "denoise":
            snap = canvas_snapshot(req, self._decode, self._mask_id)
            if snap is not None and snap["canvas"] == sub.last_snapshot and not delta:
                snap = None  # nothing new to show
            elif snap is not None:
                sub.last_snapshot = snap["canvas"]
        if delta or snap is not None:
            sub.job.emit("delta", sub.index, delta, snap)

    def _finish(self, rid: int, sub: _Sub, req: Any) -> None:
        self._active.pop(rid, None)
        self.engine._requests.pop(rid, None)
        traj = self.engine._trajectory(sub.index, req)
        rest = sub.text.finish(traj.text) if sub.text is not None else traj.text
        result = {"text": traj.text, "rest": rest, "finish_reason": traj.finish_reason,
                  "prompt_tokens": len(traj.prompt_token_ids), "completion_tokens": len(traj.token_ids),
                  "nfe": traj.nfe, "token_ids": list(traj.token_ids),
                  "ttft_s": (traj.first_token_s - traj.arrival_s) if traj.first_token_s is not None else None,
                  "latency_s": traj.finish_s - traj.arrival_s, "finished_at": time.time()}
        sub.job.emit("done", sub.index, result)
        self._done_one(sub.job)

    def _drop(self, rid: int) -> None:
        """Abort one engine request now (between steps): its pages go back to the free list."""
        self._active.pop(rid, None)
        if self.engine.abort_request(rid):
            self.aborted += 1
        self.engine._apply_pending_aborts()
        self.engine._requests.pop(rid, None)

    def _fail(self, rid: int, err: APIError) -> None:
        sub = self._active.get(rid)
        try:
            self._drop(rid)
        except Exception:
            log.exception("could not abort request %d", rid)
            self._active.pop(rid, None)
        if sub is not None:
            sub.job.emit("error", None, err)
            self._done_one(sub.job)

    def _done_one(self, job: Job) -> None:
        if job.open > 0:
            job.open -= 1
            self._release(1)

    def _release(self, n: int) -> None:
        with self._lock:
            self._in_flight -= n
