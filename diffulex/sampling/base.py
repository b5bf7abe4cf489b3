"""The sampler interface: one forward's logits in, one decision per request out."""

from __future__ import annotations

import bisect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch

from ..engine.batch import host_to_device, rows_on
from ..engine.faults import NonFiniteLogits


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

    @property
    def kernels(self) -> str:
        """``runtime.kernels`` (resolved): with ``"triton"`` on CUDA, greedy selection takes the one-pass kernel."""
        value = getattr(getattr(self.config, "runtime", None), "kernels", "torch")
        return getattr(value, "value", value)

    @abstractmethod
    def decide(self, batch: Any, logits: torch.Tensor, reqs: list[Any], forbidden: torch.Tensor) -> list[Decision]:
        """One Decision per request of the batch, in batch order."""

    @staticmethod
    def row_params(batch: Any, reqs: list[Any], device: torch.device) -> Any:
        """Per-row temperature / top-k / top-p / generators from each request's SamplingParams.

        The per-request values go to the device in one non-blocking copy (no stream sync);
        whether any row samples is known on the host (``any_sampled``), so token selection
        need not read it back from the device.
        """
        from .select import SelectionParams

        row_req = rows_on(batch, device).row_request
        sp = [r.sampling_params for r in reqs]
        # [3, R] float64 holds every value exactly (top_k capped at 2^53: any k >= vocab keeps all);
        # the casts below round temperature / top_p to float32 as building them as float32 would.
        per_req = torch.tensor([[p.temperature for p in sp], [min(p.top_k, 1 << 53) for p in sp],
                                [p.top_p for p in sp]], dtype=torch.float64)
        per_row = host_to_device(per_req, device)[:, row_req]  # [3, M]
        sampled = any(p.temperature > 0 for p in sp)
        gens = [reqs[i].generator for i in batch.row_request.tolist()] if sampled else None
        any_row = sampled and bool(  # some *row* has a float32 temperature > 0, as the device would say
            (per_req[0].float() > 0)[torch.bincount(batch.row_request, minlength=len(reqs)) > 0].any())
        return SelectionParams(per_row[0].float(), per_row[1].long(), per_row[2].float(), gens, any_sampled=any_row)


def fills_per_request(num_reqs: int, take: torch.Tensor, row_request: torch.Tensor, row_position: torch.Tensor,
                      tokens: torch.Tensor, conf: torch.Tensor) -> list[list[tuple[int, int, float]]]:
    """Per request, ``(position, token, confidence)`` of the rows where ``take`` is set, in row order.

    take, row_request, row_position, tokens: [M] (bool / long), conf: [M] float, on the logits'
    device. One transfer brings everything to the host (the step's one sync; no ``nonzero`` on
    the device first, and the confidences ride along bit-cast to int64), where the rows are
    selected with two tensor ops and grouped without a Python loop per row when, as in a
    packed batch, rows come request by request.
    """
    host = torch.stack([take.long(), row_request.long(), row_position.long(), tokens.long(),
                        conf.double().view(torch.long)]).cpu()  # [5, M]: the one host sync
    finite = torch.isfinite(host[4].view(torch.float64))  # [M], on the host: NaN / inf logits give NaN conf
    if not bool(finite.all()):
        raise NonFiniteLogits(sorted(set(host[1][~finite].tolist())))
    sel = host[:, host[0] != 0]  # [5, F]
    req, pos, tok = sel[1:4].tolist()
    fills = list(zip(pos, tok, sel[4].view(torch.float64).tolist()))
    if req != sorted(req):  # not request-major: group row by row
        out: list[list] = [[] for _ in range(num_reqs)]
        for r, f in zip(req, fills):
            out[r].append(f)
        return out
    cuts = [bisect.bisect_left(req, r) for r in range(num_reqs + 1)]
    return [fills[a:b] for a, b in zip(cuts[:-1], cuts[1:])]
