"""OpenAI-compatible HTTP server with diffusion-aware streaming (docs/serving.md).

Needs the ``serve`` extra (``pip install -e ".[serve]"``: FastAPI and uvicorn). Modules:
``protocol`` (request parsing, error bodies), ``streaming`` (committed text and denoise
snapshots), ``engine_loop`` (the engine thread), ``app`` (routes), ``server`` (uvicorn),
``cli`` (``python -m diffulex.serve``). Importing this package imports none of them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["serve", "ServerThread"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import server

        return getattr(server, name)
    raise AttributeError(name)
