"""Start the server around an engine: in the foreground (``serve``) or in a thread (``ServerThread``)."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Optional

import uvicorn

from .app import create_app
from .engine_loop import EngineLoop

log = logging.getLogger("diffulex.serve")

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def model_name_of(engine: Any) -> str:
    """The served model id: the checkpoint directory's name."""
    path = getattr(engine.config.model, "path", "") or ""
    return os.path.basename(os.path.normpath(str(path))) or "diffulex"


def build(engine: Any, *, host: str = "127.0.0.1", port: int = 8000, api_key: Optional[str] = None,
          max_queue: int = 256, model_name: Optional[str] = None, log_level: str = "warning") -> tuple:
    """(uvicorn.Server, EngineLoop) for one engine; nothing is started yet."""
    if host not in LOOPBACK and not api_key:
        log.warning("serving on %s without --api-key: anyone who can reach this port can use the model", host)
    loop = EngineLoop(engine, max_queue=max_queue)
    app = create_app(loop, model_name or model_name_of(engine), api_key=api_key)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False, lifespan="off",
                            timeout_graceful_shutdown=5)
    return uvicorn.Server(config), loop


def serve(engine: Any, **kwargs: Any) -> None:
    """Serve until Ctrl-C; the engine loop stops with the server (the caller exits the engine)."""
    server, loop = build(engine, **kwargs)
    loop.start()
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it shut down on
        log.info("stopped")
    finally:
        loop.stop()


class ServerThread:
    """The server in a background thread (tests, benchmarks): ``with ServerThread(llm, port=0) as s: s.url``."""

    def __init__(self, engine: Any, **kwargs: Any) -> None:
        self.server, self.loop = build(engine, **kwargs)
        self.model_name = self.server.config.app.state.model_name
        self._thread = threading.Thread(target=self.server.run, name="diffulex-http", daemon=True)

    @property
    def port(self) -> int:
        return self.server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://{self.server.config.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> "ServerThread":
        self.loop.start()
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the HTTP server did not start (is the port free?)")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(10)
        self.loop.stop()

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
