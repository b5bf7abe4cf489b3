"""Worker processes for ranks 1..world-1.

Each worker is spawned (never forked: CUDA and threads do not survive fork), builds its
own model runner from the same validated Config, reports ``started`` just before the
rendezvous and ``ready`` (or the exception) after construction, then executes runner
methods on command from rank 0. Workers die with their parent (PR_SET_PDEATHSIG), and
:meth:`WorkerGroup.close` joins, terminates, then kills, so nothing outlives ``exit()``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import signal
import traceback
from typing import Any, Callable, Optional

_JOIN_TIMEOUT_S = 5.0


class WorkerError(RuntimeError):
    """An exception raised inside a worker whose original type could not be rebuilt."""


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: rely on close() instead
        pass


def _pack_error(exc: BaseException) -> tuple[Any, str]:
    tb = traceback.format_exc()
    try:
        pickle.dumps(exc)
        return exc, tb
    except Exception:
        return WorkerError(f"{type(exc).__name__}: {exc}"), tb


def _worker_main(runner_factory: Callable[..., Any], config: Any, rank: int, conn: Any) -> None:
    from .distributed import destroy_parallel_state, join_parallel_state

    _die_with_parent()
    parallel = None
    try:
        conn.send(("started", None))
        parallel = join_parallel_state(config, rank)
        runner = runner_factory(config, parallel)
    except BaseException as exc:  # report any startup failure to rank 0
        conn.send(("error", _pack_error(exc)))
        if parallel is not None:
            destroy_parallel_state(parallel)
        return
    conn.send(("ready", None))
    try:
        _serve(runner, conn)
    finally:
        destroy_parallel_state(parallel)


def _serve(runner: Any, conn: Any) -> None:
    while True:
        try:
            method, args = conn.recv()
        except EOFError:  # parent went away
            break
        if method == "exit":
            try:
                runner.exit()
            finally:
                conn.send(("ok", None))
            break
        try:
            conn.send(("ok", getattr(runner, method)(*args)))
        except BaseException as exc:
            conn.send(("error", _pack_error(exc)))


class WorkerGroup:
    """The spawned ranks of one engine; rank 0 (the caller) drives them."""

    def __init__(self) -> None:
        self.processes: list[mp.Process] = []
        self.conns: list[Any] = []

    @classmethod
    def start(cls, runner_factory: Callable[..., Any], config: Any, world_size: int) -> "WorkerGroup":
        group = cls()
        ctx = mp.get_context("spawn")
        for rank in range(1, world_size):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker_main, args=(runner_factory, config, rank, child),
                            name=f"diffulex-rank{rank}", daemon=True)
            p.start()
            child.close()
            group.processes.append(p)
            group.conns.append(parent)
        return group

    def _expect(self, rank_index: int, wanted: str, timeout_s: Optional[float]) -> Any:
        conn, proc = self.conns[rank_index], self.processes[rank_index]
        waited = 0.0
        while not conn.poll(0.1):
            waited += 0.1
            if not proc.is_alive() and not conn.poll(0):
                raise WorkerError(f"worker rank {rank_index + 1} exited with code {proc.exitcode} "
                                  f"before sending {wanted!r}")
            if timeout_s is not None and waited > timeout_s:
                raise TimeoutError(f"worker rank {rank_index + 1} sent no {wanted!r} within {timeout_s:.0f}s")
        try:
            kind, payload = conn.recv()
        except EOFError:
            raise WorkerError(f"worker rank {rank_index + 1} closed its pipe before {wanted!r}") from None
        if kind == "error":
            exc, tb = payload
            if hasattr(exc, "add_note"):
                exc.add_note(f"--- raised in worker rank {rank_index + 1}:\n{tb}")
            raise exc
        return payload

    def wait(self, wanted: str, timeout_s: Optional[float] = None) -> list[Any]:
        """Wait for every worker's ``wanted`` message; re-raise the first worker error."""
        return [self._expect(i, wanted, timeout_s) for i in range(len(self.conns))]

    def send(self, method: str, *args: Any) -> None:
        """Ask every worker to run ``runner.method(*args)`` (collect with :meth:`wait`)."""
        for conn in self.conns:
            conn.send((method, args))

    def close(self) -> None:
        """Ask workers to exit, then join, terminate, kill; safe to call repeatedly."""
        for conn, proc in zip(self.conns, self.processes):
            if proc.is_alive():
                try:
                    conn.send(("exit", ()))
                except (BrokenPipeError, OSError):
                    pass
        for proc in self.processes:
            proc.join(_JOIN_TIMEOUT_S)
            if proc.is_alive():
                proc.terminate()
                proc.join(_JOIN_TIMEOUT_S)
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGKILL)
                proc.join()
        for conn in self.conns:
            conn.close()
        self.processes, self.conns = [], []
