"""The ``parallel`` config group: process topology and rendezvous."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .enums import Device
from .errors import check_range, coerce_enum, config_error


@dataclass
class ParallelConfig:
    """Tensor x expert x data parallel ranks; rank 0 is the caller's process."""

    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    expert_parallel_size: int = 1
    # Where ranks run. auto: CUDA if available, else CPU (gloo).
    device: Device = Device.AUTO
    # CUDA device ids to use, one per rank; empty: every visible device.
    device_ids: list[int] = field(default_factory=list)
    # torch.distributed backend; None: nccl on CUDA, gloo on CPU.
    backend: Optional[str] = None
    master_addr: str = "127.0.0.1"
    # Rendezvous port; 0 picks a free one.
    master_port: int = 0
    timeout_s: int = 600

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
        for i in self.device_ids:
            check_range("parallel.device_ids[]", i, 0, None, integer=True)
