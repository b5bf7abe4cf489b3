"""Kernel selection: the one place that decides which implementation of each op runs.

Layers never import a kernel directly; they call :func:`get_ops` with the device of their
tensors. Only the plain-PyTorch reference ops exist so far; Triton versions for CUDA will
be returned from here once they land.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from diffulex.kernels.reference import paged_attention as _ref_paged_attention
from diffulex.kernels.reference import store_kvcache as _ref_store_kvcache


@dataclass(frozen=True)
class KernelOps:
    """The ops a forward pass needs, as one bundle chosen per device."""

    name: str
    store_kvcache: Callable[..., None]
    paged_attention: Callable[..., torch.Tensor]


REFERENCE_OPS = KernelOps(
    name="reference",
    store_kvcache=_ref_store_kvcache,
    paged_attention=_ref_paged_attention,
)


def get_ops(device: torch.device | str) -> KernelOps:
    """Return the ops for tensors on ``device`` (the reference ops everywhere, for now)."""
    torch.device(device)  # rejects malformed device strings
    return REFERENCE_OPS


__all__ = ["KernelOps", "REFERENCE_OPS", "get_ops"]
