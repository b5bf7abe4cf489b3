"""Process topology: which rank holds which tensor / expert / data-parallel shard.

Ranks form a (data, expert, tensor) mesh with tensor-parallel ranks adjacent, so that a
tensor-parallel group is a run of consecutive ranks (one host's GPUs in practice). The
object is passed explicitly to the layers that need it; there is no global state.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Optional

import torch


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
                        addr: str, port: int, timeout_s: int) -> ParallelState:
    """Join the process group (when world > 1) and build the tp / ep / dp subgroups."""
    state = ParallelState(rank, world_size, tp, ep, dp)
    if world_size == 1:
        return state
    import torch.distributed as dist

    dist.init_process_group(backend, init_method=f"tcp://{addr}:{port}", rank=rank,
                            world_size=world_size, timeout=timedelta(seconds=timeout_s))
    ranks = torch.arange(world_size).reshape(dp, ep, tp)
    # Every rank must create every group, in the same order.
    for d in range(dp):
        for e in range(ep):
            g = dist.new_group(ranks[d, e].tolist())
            if rank in ranks[d, e].tolist():
                state.tp_group = g
        for t in range(tp):
            g = dist.new_group(ranks[d, :, t].tolist())
            if rank in ranks[d, :, t].tolist():
                state.ep_group = g
    for e in range(ep):
        for t in range(tp):
            g = dist.new_group(ranks[:, e, t].tolist())
            if rank in ranks[:, e, t].tolist():
                state.dp_group = g
    return state


def destroy_parallel_state(state: ParallelState) -> None:
    """Leave the process group so a later engine in this process can start a new one."""
    if state.world_size == 1:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def join_parallel_state(config: Any, rank: int) -> ParallelState:
    """Join the process group of ``config``'s topology as ``rank``."""
    p = config.parallel
    return init_parallel_state(rank, p.world_size, p.tensor_parallel_size, p.expert_parallel_size,
                               p.data_parallel_size, p.backend, p.master_addr, p.master_port, p.timeout_s)
