"""Command-line error reporting for the Hydra scripts: user errors are one line and exit code 2.

Diffulex raises ``ValueError`` for every mistake a user can make (a config value, a
combination, a prompt file, a task) with a message that says what is wrong and how to fix it.
On the command line such an error is printed as ``error: <message>`` and the process exits 2,
with no traceback and no ``HYDRA_FULL_ERROR`` hint; anything else (a bug) keeps its traceback.
``results.json`` still records the failure. In a multirun the error is left to Hydra's
launcher, which reports the failed job and the others still run as the launcher decides.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

EXIT_USER_ERROR = 2


def raised_by_diffulex(exc: BaseException) -> bool:
    """Whether the innermost frame of ``exc``'s traceback is Diffulex code (a deliberate error)."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return str(tb.tb_frame.f_globals.get("__name__", "")).startswith("diffulex.")


def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_reporting_user_errors(fn: Callable[[Any], Any], cfg: Any) -> Any:
    """``fn(cfg)``; a Diffulex ``ValueError`` in a single run becomes ``error: ...`` and exit 2."""
    try:
        return fn(cfg)
    except ValueError as e:
        if _multirun() or not raised_by_diffulex(e):
            raise
        print(f"error: {e}", file=sys.stderr)  # results.json in the run directory records it too
        raise SystemExit(EXIT_USER_ERROR) from None
