"""Run Triton kernels on CPU tensors (TRITON_INTERPRET=1) without leaking the setting.

The variable must be set while a kernel module is imported (decoration time) and while its
kernels run; the rest of the suite must not see it. Usage in a test module::

    with interpreted():
        from diffulex.kernels.triton.paged_attention import paged_attention
    from triton_interp import triton_interpreter  # noqa: F401  (autouse fixture)
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import pytest


@contextmanager
def interpreted() -> Iterator[None]:
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous


@pytest.fixture(autouse=True)
def triton_interpreter(monkeypatch):
    """Keep the interpreter on while each test of the importing module runs."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
