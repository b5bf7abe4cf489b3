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
    """Base sampler. Subclasses implement :meth:`decide` as tensor code with one host transfer.

    A sampler whose decisions are fills only may also implement :meth:`launch` (queue the
    decision's device work, read it later): the overlapped decoding loop
    (:mod:`diffulex.engine.overlap`) then starts the next step on the device before the host
    has read this one.
    """

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

    def launch(self, batch: Any, logits: torch.Tensor, reqs: list[Any], forbidden: torch.Tensor) -> "PendingDecisions":
        """The step's decisions, read on the host only by ``result()``. The default decides at once
        (no device-side fills: the overlapped loop does not speculate after such a step)."""
        return ReadyDecisions(self.decide(batch, logits, reqs, forbidden))

    def sure_fills(self, batch: Any) -> torch.Tensor:
        """[NB] long: masks each block of ``batch`` takes this step whatever the logits (host
        tensors only; more than a block's masks means all of them). The overlapped loop predicts
        from it which blocks complete. Default: a forced block its ``min_fill`` (1), a
        ``force_all`` block everything, a quota block its quota."""
        big = torch.full_like(batch.block_quota, 1 << 40)
        sure = torch.where(batch.block_forced, batch.block_min_fill.clamp_min(1), torch.zeros_like(big))
        sure = torch.where(batch.block_quota >= 0, torch.maximum(sure, batch.block_quota), sure)
        return torch.where(batch.block_force_all, big, sure)

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


class PendingDecisions(ABC):
    """A step's decisions, queued on the device; :meth:`result` reads them (the host sync).

    ``take`` / ``tokens`` ([M] bool / long, on the device, or None) are the rows the step fills
    and their tokens: the overlapped loop writes them into the next step's inputs on the device.
    """

    take: torch.Tensor | None = None
    tokens: torch.Tensor | None = None

    @abstractmethod
    def result(self) -> list[Decision]:
        """One Decision per request of the step, in batch order."""

    def host_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """([M] bool, [M] long) on the host: ``take`` and ``tokens`` as read by :meth:`result`
        (only where ``take`` is set)."""
        raise TypeError(f"{type(self).__name__} has no device-side fills (take is None)")


class ReadyDecisions(PendingDecisions):
    """Decisions already on the host (a sampler without a device-side :meth:`Sampler.launch`)."""

    def __init__(self, decisions: list[Decision]) -> None:
        self.decisions = decisions

    def result(self) -> list[Decision]:
        return self.decisions


class StagedFills(PendingDecisions):
    """Fills only: ``(position, token, confidence)`` of the rows where ``take`` is set, per request.

    take, row_request, row_position, tokens: [M] (bool / long), conf: [M] float, on the logits'
    device. One transfer brings everything to the host (the step's one sync; no ``nonzero`` on
    the device first, and the confidences ride along bit-cast to int64): on CUDA it is queued
    at once into pinned memory and waited for in :meth:`result`. There the rows are selected
    with two tensor ops and grouped without a Python loop per row when, as in a packed batch,
    rows come request by request.
    """

    def __init__(self, num_reqs: int, take: torch.Tensor, row_request: torch.Tensor, row_position: torch.Tensor,
                 tokens: torch.Tensor, conf: torch.Tensor) -> None:
        self.num_reqs = num_reqs
        self.take, self.tokens = take.bool(), tokens.long()
        rows = torch.stack([take.long(), row_request.long(), row_position.long(), tokens.long(),
                            conf.double().view(torch.long)])  # [5, M]
        self.done = None
        if rows.device.type == "cuda":
            self.host = torch.empty(rows.shape, dtype=torch.long, pin_memory=True)
            self.host.copy_(rows, non_blocking=True)
            self.done = torch.cuda.Event()
            self.done.record()
        else:
            self.host = rows
        self._result: list[Decision] | None = None

    def host_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        self._wait()
        return self.host[0] != 0, self.host[3]

    def _wait(self) -> None:
        if self.done is not None:
            self.done.synchronize()  # the one host sync of the step
            self.done = None

    def result(self) -> list[Decision]:
        if self._result is None:
            self._result = [Decision(fills=f) for f in self._fills()]
        return self._result

    def _fills(self) -> list[list[tuple[int, int, float]]]:
        self._wait()
        host, num_reqs = self.host, self.num_reqs
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


def fills_per_request(num_reqs: int, take: torch.Tensor, row_request: torch.Tensor, row_position: torch.Tensor,
                      tokens: torch.Tensor, conf: torch.Tensor) -> list[list[tuple[int, int, float]]]:
    """Per request, ``(position, token, confidence)`` of the rows where ``take`` is set, in row order
    (see :class:`StagedFills`, which this reads at once)."""
    return StagedFills(num_reqs, take, row_request, row_position, tokens, conf)._fills()
