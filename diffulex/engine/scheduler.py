"""Request queues shared by every strategy's scheduler."""

from __future__ import annotations

from collections import deque
from typing import Any

from .request import Request, RequestStatus


class Scheduler:
    """Waiting and running queues; strategies add the per-step scheduling policy."""

    def __init__(self, config: Any, kv_cache_manager: Any) -> None:
        self.config = config
        self.kv_cache_manager = kv_cache_manager
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []

    def add(self, req: Request) -> None:
        self.waiting.append(req)

    def is_finished(self) -> bool:
        return not self.waiting and not self.running

    def abort(self, req_id: int) -> bool:
        """Drop a request wherever it is; frees its pages. False when unknown."""
        for queue in (self.waiting, self.running):
            for req in list(queue):
                if req.req_id == req_id:
                    queue.remove(req)
                    self.kv_cache_manager.free(req.page_table)
                    req.finish("aborted")
                    return True
        return False

    def release(self, req: Request) -> None:
        """A finished request leaves the running set and gives back its pages."""
        if req in self.running:
            self.running.remove(req)
        self.kv_cache_manager.free(req.page_table)
        if req.status != RequestStatus.FINISHED:
            req.finish("aborted")
