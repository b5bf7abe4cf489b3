"""Facts about how Triton runs here, shared by the kernels' wrappers."""

from __future__ import annotations

import os
from functools import lru_cache

import torch
import triton
import triton.language as tl

try:  # grid dependency control (programmatic dependent launch), Hopper and later
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # an older Triton: kernels launch the plain way
    gdc_launch_dependents = gdc_wait = None


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


# Programmatic dependent launch (PDL, sm_90+): a kernel launched with it may be scheduled while the
# kernel before it in the stream is still running; its programs start with ``pdl_enter``, which
# waits until that kernel has completed and its writes are visible (``griddepcontrol.wait``), then
# lets the next kernel be scheduled the same way. Nothing is read or written before the wait, so
# results are those of plain launches; what overlaps is the next kernel's launch and scheduling
# with the tail of the current one (CUDA graphs keep these edges). ``DIFFULEX_PDL=0`` turns it off.
_PDL_ON = {"PDL": True, "launch_pdl": True}
_PDL_OFF = {"PDL": False}


@triton.jit
def pdl_enter(PDL: tl.constexpr):
    """The first statement of every kernel that takes ``**pdl_kwargs(device)``."""
    if PDL:
        gdc_wait()
        gdc_launch_dependents()


@lru_cache(maxsize=None)
def _pdl_capable(index: int) -> bool:
    return gdc_wait is not None and torch.cuda.get_device_capability(index)[0] >= 9


def pdl_kwargs(device: torch.device) -> dict:
    """Launch arguments for a kernel that starts with :func:`pdl_enter`: PDL on CUDA sm_90+ (not under
    the interpreter, not with ``DIFFULEX_PDL=0``), else the plain launch."""
    if device.type != "cuda" or is_interpreting() or os.environ.get("DIFFULEX_PDL", "1") == "0":
        return _PDL_OFF
    return _PDL_ON if _pdl_capable(device.index if device.index is not None else torch.cuda.current_device()) \
        else _PDL_OFF
