"""Facts about how Triton runs here, shared by the kernels' wrappers."""

from __future__ import annotations

import os
from functools import lru_cache

import torch


def is_interpreting() -> bool:
    """True under ``TRITON_INTERPRET=1`` (kernels run on CPU; bf16 ``tl.dot`` is unreliable there)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def next_pow2(n: int) -> int:
    """Smallest power of two >= max(n, 1)."""
    return 1 << max(n - 1, 0).bit_length()


@lru_cache(maxsize=None)
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (a launch heuristic's grid target); 132 (an H100)
    when not on CUDA, so the interpreter takes the same launch decisions as the GPU."""
    if device.type != "cuda":
        return 132
    return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())
