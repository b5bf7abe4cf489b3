"""Process topology: which rank holds which tensor / expert / data-parallel shard.

Ranks form a (data, expert, tensor) mesh with tensor-parallel ranks adjacent, so that a
tensor-parallel group is a run of consecutive ranks (one host's GPUs in practice). The
object is passed explicitly to the layers that need it; there is no global state.

Two ways in: :func:`join_parallel_state` (launcher ``spawn``: rank 0 spawned the others and
names a TCP rendezvous) and :func:`join_env_parallel_state` (launcher ``env``: torchrun
started every rank, possibly on several nodes, and put the rendezvous in the environment).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Optional

import torch

# How long an idle worker (launcher env) waits for rank 0's next command; effectively forever.
_CONTROL_IDLE_TIMEOUT = timedelta(days=30)


@dataclass
class ParallelState:
    """This process's place in the mesh, plus its process groups (None when world is 1)."""

    rank: int = 0
    world_size: int = 1
    tp_size: int = 1
    ep_size: int = 1
    dp_size: int = 1
    tp_group: Optional[Any] = field(default=None, repr=False)
    ep_group: Optional[Any] = field(default=None, repr=False)
    dp_group: Optional[Any] = field(default=None, repr=False)
    # Launcher env: this rank's index on its node (LOCAL_RANK); None: the same as ``rank`` (one host).
    local_rank: Optional[int] = None
    # Launcher env: a gloo group of every rank carrying rank 0's commands and the replies
    # (the main group may be NCCL, which cannot carry pickled objects between CPU buffers).
    control_group: Optional[Any] = field(default=None, repr=False)

    @property
    def device_index(self) -> int:
        """Which entry of ``parallel.device_ids`` this rank uses: its index on its own node."""
        return self.rank if self.local_rank is None else self.local_rank

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp_size

    @property
    def ep_rank(self) -> int:
        return (self.rank // self.tp_size) % self.ep_size

    @property
    def dp_rank(self) -> int:
        return self.rank // (self.tp_size * self.ep_size)

    @property
    def is_driver(self) -> bool:
        """Rank 0 schedules and samples; the others execute the same forward."""
        return self.rank == 0


def free_port(addr: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for the rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((addr, 0))
        return s.getsockname()[1]


def init_parallel_state(rank: int, world_size: int, tp: int, ep: int, dp: int, backend: str,
                        init_method: str, timeout_s: int, *, local_rank: Optional[int] = None,
                        control: bool = False) -> ParallelState:
    """Join the process group (when world > 1) and build the tp / ep / dp subgroups.

    ``control``: also build the gloo control group (launcher env, where no pipes exist).
    """
    state = ParallelState(rank, world_size, tp, ep, dp, local_rank=local_rank)
    if world_size == 1:
        return state
    import torch.distributed as dist

    dist.init_process_group(backend, init_method=init_method, rank=rank,
                            world_size=world_size, timeout=timedelta(seconds=timeout_s))
    ranks = torch.arange(world_size).reshape(dp, ep, tp)
    timeout = timedelta(seconds=timeout_s)  # subgroups too: torch's default would be 30 minutes
    # Every rank must create every group, in the same order.
    for d in range(dp):
        for e in range(ep):
            g = dist.new_group(ranks[d, e].tolist(), timeout=timeout)
            if rank in ranks[d, e].tolist():
                state.tp_group = g
        for t in range(tp):
            g = dist.new_group(ranks[d, :, t].tolist(), timeout=timeout)
            if rank in ranks[d, :, t].tolist():
                state.ep_group = g
    for e in range(ep):
        for t in range(tp):
            g = dist.new_group(ranks[:, e, t].tolist(), timeout=timeout)
            if rank in ranks[:, e, t].tolist():
                state.dp_group = g
    if control:
        # Idle workers wait in a receive on this group for rank 0's next command, for as long
        # as the user's script runs between engine calls: its timeout must not end them.
        state.control_group = dist.new_group(backend="gloo", timeout=_CONTROL_IDLE_TIMEOUT)
    return state


def destroy_parallel_state(state: ParallelState) -> None:
    """Leave the process group so a later engine in this process can start a new one."""
    if state.world_size == 1:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    # The subgroups hold the rendezvous store (its listening socket and threads): drop them
    # (the engine's exit() then collects, so the port is closed when it returns).
    for name in ("tp_group", "ep_group", "dp_group", "control_group"):
        if hasattr(state, name):
            setattr(state, name, None)


def join_parallel_state(config: Any, rank: int) -> ParallelState:
    """Launcher spawn: join the TCP rendezvous at ``parallel.master_addr:master_port`` as ``rank``."""
    p = config.parallel
    return init_parallel_state(rank, p.world_size, p.tensor_parallel_size, p.expert_parallel_size,
                               p.data_parallel_size, p.backend, f"tcp://{p.master_addr}:{p.master_port}",
                               p.timeout_s)


def join_env_parallel_state(config: Any, launch: Any) -> ParallelState:
    """Launcher env: join as the rank torchrun assigned (``launch``, a :class:`LaunchEnv`).

    The rendezvous is ``env://`` (MASTER_ADDR / MASTER_PORT from the launcher); the config's
    master_addr / master_port are not used. Builds the gloo control group too.
    """
    p = config.parallel
    return init_parallel_state(launch.rank, launch.world_size, p.tensor_parallel_size, p.expert_parallel_size,
                               p.data_parallel_size, p.backend, "env://", p.timeout_s,
                               local_rank=launch.local_rank, control=True)
