"""The control plane from rank 0 (the driver) to ranks 1..world-1.

Rank 0 sends commands ``(method, args)``; a worker runs ``runner.method(*args)`` and replies
``("ok", result)`` or ``("error", (exception, traceback))``, which rank 0 re-raises with the
worker's traceback attached. At startup a worker reports ``("ready", None)`` after building
its model runner, or the construction error. Two transports carry these same tuples:

* :class:`WorkerGroup` (launcher ``spawn``): rank 0 spawns the workers on its host (never
  forks: CUDA and threads do not survive fork) and talks over multiprocessing pipes. A
  spawned worker also reports ``started`` just before the rendezvous. Workers die with their
  parent (PR_SET_PDEATHSIG), and :meth:`WorkerGroup.close` joins, terminates, then kills, so
  nothing outlives ``exit()``.
* :class:`EnvWorkerGroup` (launcher ``env``): torchrun started every rank, possibly on other
  nodes; messages travel point to point over a gloo control group (``send_object_list`` /
  ``recv_object_list``). The worker side is :func:`serve_env_worker`, which ends its process.

Both implement :class:`Workers`, the small interface the engine and data parallelism use.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
from abc import ABC, abstractmethod
import os
import pickle
import signal
import traceback
from typing import Any, Callable, NoReturn, Optional

_JOIN_TIMEOUT_S = 5.0

logger = logging.getLogger("diffulex.engine")


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


def _unpack_reply(index: int, wanted: str, message: Any) -> Any:
    """The payload of worker ``index``'s ``wanted`` message; its error re-raised on rank 0."""
    kind, payload = message[0], message[1]
    if kind == "error":
        exc, tb = payload
        if hasattr(exc, "add_note"):
            exc.add_note(f"--- raised in worker rank {index + 1}:\n{tb}")
        raise exc
    if kind != wanted:
        raise WorkerError(f"worker rank {index + 1} sent {kind!r} where rank 0 expected {wanted!r}: "
                          "the control channel is out of step")
    return payload


# -- worker side ---------------------------------------------------------------------------

def _serve(runner: Any, conn: Any) -> bool:
    """Run rank 0's commands until ``exit``; True on exit, False when rank 0 went away.

    ``conn`` is any channel with ``send(message)`` and ``recv()`` (EOFError when closed):
    a pipe end for spawned workers, a :class:`DriverLink` under torchrun.
    """
    while True:
        try:
            message = conn.recv()
        except EOFError:  # rank 0 went away
            return False
        # (method, args), or (seq, method, args) from a driver that numbers its commands: the
        # reply then carries the number, so a late reply is never read as a later command's.
        seq, (method, args) = (message[0], message[1:]) if len(message) == 3 else (None, message)
        tag = () if seq is None else (seq,)
        if method == "exit":
            try:
                runner.exit()
            finally:
                conn.send(("ok", None, *tag))
            return True
        try:
            conn.send(("ok", getattr(runner, method)(*args), *tag))
        except BaseException as exc:
            conn.send(("error", _pack_error(exc), *tag))


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


class DriverLink:
    """A torchrun-started worker's channel to rank 0: pickled messages over the gloo control group."""

    def __init__(self, group: Any) -> None:
        self.group = group

    def send(self, message: Any) -> None:
        import torch.distributed as dist

        dist.send_object_list([message], dst=0, group=self.group)

    def recv(self) -> Any:
        import torch.distributed as dist

        box: list[Any] = [None]
        try:
            dist.recv_object_list(box, src=0, group=self.group)
        except RuntimeError as exc:  # gloo: rank 0's connection closed (it crashed or was killed)
            raise EOFError(f"rank 0 closed the control channel: {exc}") from exc
        return box[0]


class _FailedRunner:
    """Stands in for a runner whose construction failed: answers ``exit``, refuses the rest.

    The worker stays until rank 0 says exit, so rank 0 can re-raise the error and shut down
    in order instead of being torn down by the launcher as soon as one rank ends.
    """

    def __init__(self, rank: int, exc: BaseException) -> None:
        self.rank, self.exc = rank, exc

    def exit(self) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"worker rank {self.rank} has no model runner (its construction failed: "
                           f"{self.exc!r}); cannot run {name!r}")


def serve_env_worker(runner_factory: Callable[..., Any], config: Any, parallel: Any) -> NoReturn:
    """Be rank ``parallel.rank`` (> 0) of a torchrun-launched engine, then end the process.

    Builds the runner, reports ``ready`` (or the error) to rank 0, serves its commands until
    ``exit``, leaves the process group and raises ``SystemExit(0)``: the user's script, which
    runs on every rank, never continues past ``Diffulex(...)`` on a worker. Exit code 1 when
    rank 0 vanished without sending exit.
    """
    from .distributed import destroy_parallel_state

    link = DriverLink(parallel.control_group)
    try:
        try:
            runner = runner_factory(config, parallel)
        except Exception as exc:  # rank 0 re-raises it; this rank waits for exit
            link.send(("error", _pack_error(exc)))
            runner = _FailedRunner(parallel.rank, exc)
        else:
            link.send(("ready", None))
        told_to_exit = _serve(runner, link)
    finally:
        destroy_parallel_state(parallel)
    if not told_to_exit:
        logger.error("rank %d: rank 0 closed the control channel without sending exit", parallel.rank)
    raise SystemExit(0 if told_to_exit else 1)


def join_launched_ranks(runner_factory: Callable[..., Any], config: Any) -> tuple[Any, "EnvWorkerGroup"]:
    """Launcher env (torchrun): every rank runs the user's script and calls this from ``Diffulex(...)``.

    All ranks join the ``env://`` rendezvous. Rank 0 gets ``(parallel state, workers)`` and
    goes on as the driver. Every other rank becomes a worker (:func:`serve_env_worker`) and
    never returns: the script's code after ``Diffulex(...)`` runs on rank 0 only.
    """
    from ..config.parallel import LaunchEnv
    from .distributed import join_env_parallel_state

    launch = LaunchEnv.read(os.environ)
    if launch is None or launch.world_size != config.world_size:
        raise RuntimeError("parallel.launcher='env' but RANK / WORLD_SIZE in the environment changed after the "
                           "config was validated; build the Config in the process that torchrun started")
    parallel = join_env_parallel_state(config, launch)
    if not parallel.is_driver:
        serve_env_worker(runner_factory, config, parallel)
    return parallel, EnvWorkerGroup(parallel.control_group, launch.world_size)


# -- rank 0 side ---------------------------------------------------------------------------

class Workers(ABC):
    """What rank 0 uses to drive ranks 1..world-1; worker ``index`` is rank ``index + 1``.

    Subclasses provide ``size``, :meth:`send_to`, :meth:`expect` and :meth:`close`. Every
    command sent must have its reply read (with :meth:`expect` or :meth:`wait`) before the
    next command to that worker, so that the channel stays in step.
    """

    @property
    @abstractmethod
    def size(self) -> int:
        """How many workers: world size - 1."""

    @abstractmethod
    def send_to(self, index: int, method: str, *args: Any) -> None:
        """Ask worker ``index`` to run ``runner.method(*args)`` (collect with :meth:`expect`)."""

    @abstractmethod
    def expect(self, index: int, wanted: str, timeout_s: Optional[float] = None) -> Any:
        """Worker ``index``'s next message, which must be ``wanted``; its error is re-raised here."""

    @abstractmethod
    def close(self) -> None:
        """Stop every worker; safe to call repeatedly."""

    def send(self, method: str, *args: Any) -> None:
        """Ask every worker to run ``runner.method(*args)`` (collect with :meth:`wait`)."""
        for index in range(self.size):
            self.send_to(index, method, *args)

    def wait(self, wanted: str, timeout_s: Optional[float] = None) -> list[Any]:
        """Every worker's ``wanted`` payload in rank order.

        Reads all the replies before re-raising the first worker error, so that no stale
        reply is left to be mistaken for the answer to a later command.
        """
        results: list[Any] = []
        error: Optional[Exception] = None
        for index in range(self.size):
            try:
                results.append(self.expect(index, wanted, timeout_s))
            except Exception as exc:
                error = error or exc
                results.append(None)
        if error is not None:
            raise error
        return results


class WorkerGroup(Workers):
    """Launcher spawn: the ranks rank 0 spawned on this host, driven over pipes."""

    def __init__(self) -> None:
        self.processes: list[mp.Process] = []
        self.conns: list[Any] = []
        self.broken: Optional[str] = None  # set when a worker died: every later call says so
        self._seq: list[int] = []  # per worker: the number of the last command sent
        self.timeout_s: Optional[float] = None  # deadline of every command's reply (parallel.timeout_s)

    def _dead(self, index: int, what: str) -> WorkerError:
        proc = self.processes[index]
        proc.join(0.5)
        code = proc.exitcode
        how = (f"died (signal {-code})" if code is not None and code < 0 else
               f"exited with code {code}" if code is not None else "stopped answering")
        self.broken = f"worker rank {index + 1} {how}"
        return WorkerError(f"{self.broken} {what}; this engine is closed, build a new one")

    @property
    def size(self) -> int:
        return len(self.conns)

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
            group._seq.append(0)
        group.timeout_s = float(config.parallel.timeout_s)
        return group

    def send_to(self, index: int, method: str, *args: Any) -> None:
        if self.broken:
            raise WorkerError(f"{self.broken}; this engine is closed, build a new one")
        self._seq[index] += 1
        try:
            self.conns[index].send((self._seq[index], method, args))
        except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
            raise self._dead(index, f"before {method!r} could be sent") from None

    def expect(self, index: int, wanted: str, timeout_s: Optional[float] = None) -> Any:
        if self.broken:
            raise WorkerError(f"{self.broken}; this engine is closed, build a new one")
        conn, proc = self.conns[index], self.processes[index]
        if timeout_s is None and wanted == "ok":  # a command's reply: parallel.timeout_s (not start-up,
            timeout_s = self.timeout_s            # whose weight loading may take longer)
        while True:
            waited = 0.0
            while not conn.poll(0.1):
                waited += 0.1
                if not proc.is_alive() and not conn.poll(0):
                    raise self._dead(index, f"before sending {wanted!r}")
                if timeout_s is not None and waited > timeout_s:
                    # Its reply may still come: a later command must never read it as its own.
                    self.broken = f"worker rank {index + 1} sent no {wanted!r} within {timeout_s:.0f}s"
                    raise TimeoutError(f"{self.broken}; this engine is closed, build a new one")
            try:
                message = conn.recv()
            except (EOFError, ConnectionResetError, OSError):
                raise self._dead(index, f"closed its pipe before {wanted!r}") from None
            if len(message) == 3 and message[2] != self._seq[index]:
                logger.debug("worker rank %d: dropped a late reply to command %d", index + 1, message[2])
                continue  # the reply to an earlier command that was given up on
            return _unpack_reply(index, wanted, message)

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
        if self.broken:
            # Tensors sent to a rank that died before receiving them leave their descriptors
            # registered with multiprocessing's resource sharer, which would hold them forever:
            # close them (the sharer restarts on the next send).
            from multiprocessing import resource_sharer

            resource_sharer.stop(timeout=_JOIN_TIMEOUT_S)


class EnvWorkerGroup(Workers):
    """Launcher env: ranks 1..world-1 that torchrun started (on any node), driven over gloo.

    Messages go point to point between rank 0 and each worker on ``group`` (a gloo group of
    every rank, so it works beside an NCCL main group). A receive blocks until the worker
    answers; a worker that dies closes its connection, which ends the receive with an error
    (and torchrun then stops the other ranks). ``timeout_s`` of :meth:`expect` is not used:
    there is no process to poll. Each worker owes rank 0 its startup message first.
    """

    def __init__(self, group: Any, world_size: int) -> None:
        self.group = group
        self._unread = [1] * (world_size - 1)  # messages each worker owes rank 0 (1: its ready / error)
        self._lost: set[int] = set()  # workers whose connection broke (crashed or killed)
        self._closed = False

    @property
    def size(self) -> int:
        return len(self._unread)

    def send_to(self, index: int, method: str, *args: Any) -> None:
        if self._closed:
            raise RuntimeError("the workers were closed; build a new engine")
        self._send(index, (method, args))

    def _send(self, index: int, message: Any) -> None:
        import torch.distributed as dist

        self._check_reachable(index, f"command {message[0]!r}")
        try:
            dist.send_object_list([message], dst=index + 1, group=self.group)
        except RuntimeError as exc:
            self._lost.add(index)
            raise WorkerError(f"worker rank {index + 1} went away before receiving command {message[0]!r} "
                              f"({exc}); see that rank's log") from exc
        self._unread[index] += 1

    def _recv(self, index: int, wanted: str) -> Any:
        import torch.distributed as dist

        self._check_reachable(index, wanted)
        box: list[Any] = [None]
        try:
            dist.recv_object_list(box, src=index + 1, group=self.group)
        except RuntimeError as exc:
            self._lost.add(index)
            raise WorkerError(f"worker rank {index + 1} went away before sending {wanted!r} ({exc}); "
                              "see that rank's log") from exc
        self._unread[index] -= 1
        return box[0]

    def _check_reachable(self, index: int, what: str) -> None:
        if index in self._lost:
            raise WorkerError(f"worker rank {index + 1} went away earlier (its connection broke); "
                              f"cannot exchange {what!r}: build a new engine")

    def expect(self, index: int, wanted: str, timeout_s: Optional[float] = None) -> Any:
        return _unpack_reply(index, wanted, self._recv(index, wanted))

    def close(self) -> None:
        """Read what each worker still owes, send exit, wait for every ``ok``; safe to repeat.

        Failures are logged, not raised: this runs while shutting down, often on an error path.
        """
        if self._closed:
            return
        self._closed = True
        reachable = []
        for index in range(self.size):
            if index in self._lost:  # already reported when its connection broke
                continue
            try:
                while self._unread[index] > 0:
                    self._recv(index, "a pending reply")  # stale: its command already failed
                self._send(index, ("exit", ()))
                reachable.append(index)
            except Exception as exc:
                logger.warning("worker rank %d: could not ask it to exit: %s", index + 1, exc)
        for index in reachable:
            try:
                self.expect(index, "ok")
            except Exception as exc:
                logger.warning("worker rank %d failed while exiting: %s", index + 1, exc)
