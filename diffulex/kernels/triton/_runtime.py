"""Facts about how Triton runs here, shared by the kernels' wrappers."""

from __future__ import annotations

import os


def is_interpreting() -> bool:
    """True under ``TRITON_INTERPRET=1`` (kernels run on CPU; bf16 ``tl.dot`` is unreliable there)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def next_pow2(n: int) -> int:
    """Smallest power of two >= max(n, 1)."""
    return 1 << max(n - 1, 0).bit_length()
