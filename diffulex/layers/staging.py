"""Host → device transfer of a step's small input tensors in one copy.

A step feeds the model ~10 small host tensors (token ids, positions, the attention metadata,
the logits rows). Copied one by one from pageable memory, each copy costs the host ~25 µs on
an H100 machine. :class:`HostStager` packs them into one pinned buffer, issues one
non-blocking copy and hands back device views, so the host queues the step without waiting
for the GPU.
"""

from __future__ import annotations

import torch


class HostStager:
    """One pinned host buffer and one device buffer, grown on demand, reused every step.

    The pinned buffer is rewritten only after the previous copy out of it has finished (an
    event, normally long done: the engine reads the sampler's result every step). The device
    buffer is reused in stream order: the next copy into it is queued after every kernel that
    read the previous step's views.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.host: torch.Tensor | None = None
        self.dev: torch.Tensor | None = None
        self.done: torch.cuda.Event | None = None

    def to_device(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Device copies of ``tensors`` (integer or bool dtypes, any shapes; shapes and dtypes kept)."""
        if self.device.type != "cuda" or any(t.device.type != "cpu" for t in tensors):
            return [t.to(self.device, non_blocking=True) for t in tensors]
        sizes = [t.numel() for t in tensors]
        total = sum(sizes)
        if self.host is None or self.host.numel() < total:
            n = max(total, 2 * (self.host.numel() if self.host is not None else 4096))
            self.host = torch.empty(n, dtype=torch.long, pin_memory=True)
            self.dev = torch.empty(n, dtype=torch.long, device=self.device)
            self.done = None
        if self.done is not None:
            self.done.synchronize()  # the previous step's copy out of the pinned buffer
        torch.cat([t.reshape(-1).long() for t in tensors], out=self.host[:total])
        self.dev[:total].copy_(self.host[:total], non_blocking=True)
        self.done = torch.cuda.Event()
        self.done.record()
        return [part.view(t.shape).to(t.dtype) for part, t in zip(self.dev[:total].split(sizes), tensors)]


__all__ = ["HostStager"]
