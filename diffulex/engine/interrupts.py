"""Ctrl-C during a multi-rank step: delivered after the step, when every rank is between steps.

A SIGINT that lands while rank 0 waits for other ranks' replies (or inside a collective) would
leave them mid-step: the next call would read a late reply as its own, or hang in a collective
rank 0 never joins. :func:`deferred_sigint` holds a first Ctrl-C until the step's block ends
(a step is bounded: one forward) and then raises ``KeyboardInterrupt`` there; a second Ctrl-C
within the same step raises :class:`StepInterrupted` at once, and the engine refuses further
calls (its ranks are out of step) until it is rebuilt. Only the main thread can install signal handlers; elsewhere it does nothing.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


class StepInterrupted(KeyboardInterrupt):
    """A second Ctrl-C inside a multi-rank step: the ranks are out of step, the engine is closed."""


@contextlib.contextmanager
def deferred_sigint() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[bool] = []
    previous = signal.getsignal(signal.SIGINT)

    def hold(signum, frame):  # noqa: ARG001
        if pending:  # a second Ctrl-C: the user insists; the step is abandoned half-way
            raise StepInterrupted
        pending.append(True)

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        raise KeyboardInterrupt
