"""Request state shared by every strategy (strategies subclass it for their block logic)."""

from __future__ import annotations

from enum import Enum
from typing import Any

from ..sampling_params import SamplingParams


class RequestStatus(str, Enum):
    WAITING = "waiting"  # queued, holds no KV pages
    RUNNING = "running"  # scheduled, holds KV pages
    FINISHED = "finished"


class Request:
    """One prompt being decoded: its tokens, settings and lifecycle status."""

    def __init__(self, req_id: int, prompt_token_ids: list[int], sampling_params: SamplingParams,
                 config: Any) -> None:
        if not prompt_token_ids:
            raise ValueError(f"request {req_id}: the prompt is empty; pass at least one token")
        self.req_id = req_id
        self.prompt_token_ids = list(prompt_token_ids)
        self.sampling_params = sampling_params
        self.config = config
        self.status = RequestStatus.WAITING
        self.finish_reason: str | None = None
        self.page_table: list[int] = []
        self.nfe = 0

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status == RequestStatus.FINISHED

    def finish(self, reason: str) -> None:
        self.status = RequestStatus.FINISHED
        self.finish_reason = reason

    # Forwards of this request read cached keys only below ``num_cached``, and every position at or
    # above it is rewritten before it is read: KV written by a discarded speculative step there
    # is harmless (see diffulex/engine/overlap.py). Request classes reading further set False.
    reads_below_cached = False

    def snapshot(self) -> dict:
        """This request's state: each attribute, with lists / dicts / sets copied (restore them
        in place with :meth:`restore`; the overlapped loop plans a guessed next step on it)."""
        return {k: (v, v.copy() if isinstance(v, (list, dict, set)) else None) for k, v in vars(self).items()}

    def restore(self, state: dict) -> None:
        """Back to :meth:`snapshot`'s state; containers keep their identity."""
        for k in [k for k in vars(self) if k not in state]:
            delattr(self, k)
        for k, (value, saved) in state.items():
            if saved is not None:
                value.clear()
                value.update(saved) if not isinstance(value, list) else value.extend(saved)
            setattr(self, k, value)
