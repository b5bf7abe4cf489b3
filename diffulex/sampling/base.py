"""The sampler interface: one forward's logits in, one decision per request out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Decision:
    """What a step decided for one request (absolute positions)."""

    fills: list[tuple[int, int, float]] = field(default_factory=list)  # (position, token, confidence)
    edits: list[tuple[int, int, int, float]] = field(default_factory=list)  # (position, old, new, confidence)
    remasks: list[int] = field(default_factory=list)  # positions turned back into masks
    state: dict[str, Any] = field(default_factory=dict)  # strategy-specific extras (e.g. soft inputs)


class Sampler(ABC):
    """Base sampler. Subclasses implement :meth:`decide` as tensor code with one host transfer."""

    def __init__(self, config: Any) -> None:
        self.config = config

    @abstractmethod
    def decide(self, batch: Any, logits: torch.Tensor, reqs: list[Any], forbidden: torch.Tensor) -> list[Decision]:
        """One Decision per request of the batch, in batch order."""

    @staticmethod
    def row_params(batch: Any, reqs: list[Any], device: torch.device) -> Any:
        """Per-row temperature / top-k / top-p / generators from each request's SamplingParams."""
        from .select import SelectionParams

        row_req = batch.row_request.to(device)
        sp = [r.sampling_params for r in reqs]
        temp = torch.tensor([p.temperature for p in sp], dtype=torch.float32, device=device)[row_req]
        top_k = torch.tensor([p.top_k for p in sp], dtype=torch.long, device=device)[row_req]
        top_p = torch.tensor([p.top_p for p in sp], dtype=torch.float32, device=device)[row_req]
        sampled = any(p.temperature > 0 for p in sp)
        gens = [reqs[i].generator for i in batch.row_request.tolist()] if sampled else None
        return SelectionParams(temp, top_k, top_p, gens)
