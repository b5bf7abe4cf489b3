"""The static inputs of one captured step shape: one device buffer, filled from the host in one copy.

A CUDA graph reads its inputs from fixed device addresses. A step's inputs are a dozen small
integer / bool tensors (token ids, positions, every ``AttentionMetadata`` tensor, the logits
rows). Copying each into its static buffer costs a launch (~10 us of host time each on an H100
machine, while the GPU waits for the graph); staging them through a separate device buffer first
costs more. :class:`StaticInputs` lays every field out in one byte buffer on the device, each
field a typed view at an 8-byte aligned offset, and keeps a pinned host twin of the same layout:
a step writes its host tensors into the twin with numpy (no torch op per field) and issues ONE
non-blocking host-to-device copy. The views are what the graph was captured on.

A field's host value may be smaller than its static shape (the page table of a step with
shorter contexts, fewer logits rows than tokens): it fills the leading corner and the rest gets
the field's ``fill`` value (``-1`` for a page table: no page).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

_ALIGN = 8


class StaticInputs:
    """Typed views ``self.views[name]`` of one device buffer, and the host side that fills them."""

    def __init__(self, fields: Sequence[tuple[str, torch.dtype, tuple[int, ...]]], device: torch.device,
                 fill: Mapping[str, int] | None = None) -> None:
        """``fields``: ``(name, dtype, static shape)`` in layout order; ``fill``: the value of a field's
        elements beyond its host value's extent (default 0)."""
        self.fill = dict(fill or {})
        self.offsets: dict[str, tuple[int, int]] = {}  # name -> (byte offset, bytes)
        nbytes = 0
        for name, dtype, shape in fields:
            size = int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()
            self.offsets[name] = (nbytes, size)
            nbytes += -(-size // _ALIGN) * _ALIGN
        self.nbytes = max(nbytes, _ALIGN)
        self.device = torch.device(device)
        self.buffer = torch.empty(self.nbytes, dtype=torch.uint8, device=self.device)
        pin = self.device.type == "cuda"
        self.host = torch.zeros(self.nbytes, dtype=torch.uint8, pin_memory=pin)
        host_np = self.host.numpy()
        self.views: dict[str, torch.Tensor] = {}
        self._host: dict[str, np.ndarray] = {}
        for name, dtype, shape in fields:
            off, size = self.offsets[name]
            self.views[name] = self.buffer[off:off + size].view(dtype).view(shape)
            self._host[name] = host_np[off:off + size].view(_np_dtype(dtype)).reshape(shape)
        # Recorded after each copy out of the host twin (one event, re-recorded: creating one costs
        # ~10 us of host time on an H100 machine).
        self._copied = torch.cuda.Event() if pin else None
        self._pending = False

    def write(self, values: Mapping[str, torch.Tensor]) -> None:
        """Host tensors (CPU, the fields' dtypes) -> the device views, in one non-blocking copy."""
        if self._pending:
            self._copied.synchronize()  # the previous copy out of the host twin (long done: a step reads back)
        for name, value in values.items():
            dst = self._host[name]
            src = value.numpy()
            if src.shape == dst.shape:
                dst[...] = src
                continue
            if src.ndim != dst.ndim or any(a > b for a, b in zip(src.shape, dst.shape)):
                raise ValueError(f"StaticInputs: {name} of shape {src.shape} does not fit its static shape {dst.shape}")
            dst.fill(self.fill.get(name, 0))
            dst[tuple(slice(0, n) for n in src.shape)] = src
        if self.device.type == "cuda":
            self.buffer.copy_(self.host, non_blocking=True)
            self._copied.record()
            self._pending = True
        else:
            self.buffer.copy_(self.host)


def _np_dtype(dtype: torch.dtype) -> np.dtype:
    """The numpy dtype of a torch dtype (ValueError for one numpy lacks, e.g. bfloat16)."""
    try:
        return torch.empty(0, dtype=dtype).numpy().dtype
    except TypeError as exc:
        raise ValueError(f"StaticInputs: {dtype} has no numpy dtype") from exc


__all__ = ["StaticInputs"]
