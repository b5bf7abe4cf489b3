"""The ``parallel`` config group: process topology and rendezvous."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum
from typing import Mapping, Optional

from .enums import Device, by_value
from .errors import check_range, coerce_enum, config_error


@by_value
class Launcher(str, Enum):
    """Who starts the ranks (see docs/parallelism.md, "Rendezvous, multi-node and torchrun")."""

    AUTO = "auto"  # env when the environment holds a torchrun-style WORLD_SIZE > 1 and RANK, else spawn
    SPAWN = "spawn"  # this process is rank 0 and spawns ranks 1..world-1 on this host
    ENV = "env"  # torchrun (or another launcher) started every rank; read RANK, WORLD_SIZE, ...


@dataclass(frozen=True)
class LaunchEnv:
    """The rank layout that torchrun (or any launcher setting its variables) put in the environment.

    Read, not stored in the config: every rank builds its own Config from the same script,
    and only these variables tell the ranks apart.
    """

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @classmethod
    def read(cls, environ: Mapping[str, str]) -> Optional["LaunchEnv"]:
        """The layout, or None when RANK or WORLD_SIZE is unset (no launcher).

        LOCAL_RANK / LOCAL_WORLD_SIZE default to RANK / WORLD_SIZE (every rank on one node).
        """
        if "WORLD_SIZE" not in environ or "RANK" not in environ:
            return None
        rank, world = _env_int(environ, "RANK"), _env_int(environ, "WORLD_SIZE")
        local_rank = _env_int(environ, "LOCAL_RANK") if "LOCAL_RANK" in environ else rank
        local_world = _env_int(environ, "LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in environ else world
        if world < 1 or not 0 <= rank < world or not 0 <= local_rank < local_world <= world:
            raise config_error("environment RANK/WORLD_SIZE/LOCAL_RANK/LOCAL_WORLD_SIZE",
                               f"{rank}/{world}/{local_rank}/{local_world}",
                               "0 <= RANK < WORLD_SIZE and 0 <= LOCAL_RANK < LOCAL_WORLD_SIZE <= WORLD_SIZE",
                               "start the script with torchrun, which sets them consistently")
        return cls(rank, world, local_rank, local_world)


def _env_int(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ[name])
    except ValueError:
        raise config_error(f"environment {name}", environ[name], "an integer",
                           f"unset {name} or start the script with torchrun") from None


@dataclass
class ParallelConfig:
    """Tensor x expert x data parallel ranks; rank 0 is the caller's process (the driver)."""

    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    expert_parallel_size: int = 1
    # Where ranks run. auto: CUDA if available, else CPU (gloo).
    device: Device = Device.AUTO
    # CUDA device ids to use, one per rank of this host (launcher env: indexed by LOCAL_RANK);
    # empty: every visible device.
    device_ids: list[int] = field(default_factory=list)
    # torch.distributed backend; None: nccl on CUDA, gloo on CPU.
    backend: Optional[str] = None
    # Rendezvous of spawned ranks (launcher spawn only; under torchrun MASTER_ADDR/MASTER_PORT apply).
    master_addr: str = "127.0.0.1"
    # Rendezvous port; 0 picks a free one (launcher spawn only).
    master_port: int = 0
    timeout_s: int = 600
    # Who starts the ranks. auto: env under torchrun (WORLD_SIZE > 1 and RANK set), else spawn.
    # spawn: rank 0 spawns the others on this host. env: torchrun started every rank (any node).
    launcher: Launcher = Launcher.AUTO

    def launched_rank(self) -> int:
        """This process's global rank when torchrun started every rank (launcher env), else 0.

        Scripts and the experiment layer use it to let only rank 0 write outputs: the other
        ranks end inside ``Diffulex(...)``.
        """
        if self.launcher != Launcher.ENV:
            return 0
        launch = LaunchEnv.read(os.environ)
        return launch.rank if launch is not None else 0

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.expert_parallel_size * self.data_parallel_size

    def validate(self) -> None:
        for name in ("tensor_parallel_size", "data_parallel_size", "expert_parallel_size"):
            check_range(f"parallel.{name}", getattr(self, name), 1, 1024, integer=True)
        self.device = coerce_enum(Device, "parallel.device", self.device)
        if self.backend is not None and self.backend not in ("nccl", "gloo"):
            raise config_error("parallel.backend", self.backend, "'nccl', 'gloo' or None",
                               "leave parallel.backend unset to pick by device")
        check_range("parallel.master_port", self.master_port, 0, 65535, integer=True)
        check_range("parallel.timeout_s", self.timeout_s, 1, None, integer=True)
        self.launcher = coerce_enum(Launcher, "parallel.launcher", self.launcher,
                                    "set parallel.launcher to 'auto' (torchrun detected from WORLD_SIZE and RANK), "
                                    "'spawn' (this process starts the ranks) or 'env' (started by torchrun)")
        for i in self.device_ids:
            check_range("parallel.device_ids[]", i, 0, None, integer=True)
