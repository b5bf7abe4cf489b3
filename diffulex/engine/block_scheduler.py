"""Scheduling for block-diffusion requests: token and page budgets, preemption.

Running requests go first (in arrival order); each takes the tokens of its window and
the KV pages for the positions its forward writes. When pages run out, the most recently
admitted other request is preempted: its pages are freed and it waits to be resumed,
keeping its decided tokens (its KV is recomputed from them, so outputs do not change).
Waiting requests are then admitted while budgets allow, reusing cached prefix pages.
"""

from __future__ import annotations

from typing import Any

from .request import Request, RequestStatus
from .scheduler import Scheduler


class BlockScheduler(Scheduler):
    """Continuous batching of :class:`~diffulex.strategy.pipelined.BlockRequest` objects."""

    def window_bound(self, req: Any) -> int:
        """Tokens the request may feed next step at most."""
        return req.step_token_bound()

    def schedule(self) -> list[tuple[Any, Any]]:
        rt = self.config.runtime
        budget = rt.max_num_batched_tokens
        scheduled: list[tuple[Any, Any]] = []
        protected: list[Any] = []  # the requests of ``scheduled`` (kept alongside: no O(B^2) rebuild)
        for req in list(self.running):
            if req not in self.running:  # preempted by an earlier request this step
                continue
            if self.window_bound(req) > budget:
                continue
            plan = self._plan_with_pages(req, protected=protected)
            if plan is None:
                continue
            budget -= plan.end - plan.start
            scheduled.append((req, plan))
            protected.append(req)
        while self.waiting and len(self.running) < rt.max_num_seqs:
            req = self.waiting[0]
            if self.window_bound(req) > budget and scheduled:
                break
            self._reuse_prefix(req)
            plan = self._plan_with_pages(req, protected=[], may_preempt=False)
            if plan is None:
                self.kv_cache_manager.free(req.page_table)
                req.num_cached = 0
                break
            self.waiting.popleft()
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            budget -= plan.end - plan.start
            scheduled.append((req, plan))
        if not scheduled and self.running:
            raise RuntimeError("scheduler: no running request fits one step; raise runtime.max_num_batched_tokens "
                               "or cache.num_pages")
        return scheduled

    def _reuse_prefix(self, req: Any) -> None:
        if not self.config.cache.enable_prefix_caching or req.page_table:
            return
        pages, n = self.kv_cache_manager.match_prefix(req.canvas, req.committed_end,
                                                       getattr(req, "cache_namespace", b""))
        req.page_table.extend(pages)
        req.num_cached = n

    def _plan_with_pages(self, req: Any, protected: list[Any], may_preempt: bool = True) -> Any:
        """Plan ``req``'s step and get its pages, preempting unscheduled requests if needed."""
        plan = req.plan(self.config)
        kv = self.kv_cache_manager
        while not kv.allocate(req.page_table, plan.write_end):
            victims = [r for r in self.running if r is not req and r not in protected]
            if not may_preempt or not victims:
                if not victims and not protected and not kv.can_allocate([], plan.write_end):
                    raise ValueError(f"cache: one request needs {kv.num_pages_needed([], plan.write_end)} KV pages "
                                     f"but the cache holds {kv.num_pages}; raise cache.num_pages / memory")
                if req in self.running:
                    self.preempt(req)
                return None
            self.preempt(victims[-1])
        return plan

    def preempt(self, req: Any) -> None:
        """Free ``req``'s pages and put it back at the front of the waiting queue."""
        self.running.remove(req)
        self.kv_cache_manager.free(req.page_table)
        req.preempt()
        req.status = RequestStatus.WAITING
        req.num_preemptions = getattr(req, "num_preemptions", 0) + 1
        self.waiting.appendleft(req)

    def finish(self, req: Request) -> None:
        """Release a finished request (its prefix-hashed pages stay reusable)."""
        self.release(req)
