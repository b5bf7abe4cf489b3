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
