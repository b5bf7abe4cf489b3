"""Token choice and confidence for the query rows of one step.

Greedy rows take the argmax over the allowed vocabulary (the mask token and padded vocab
rows are never chosen; ties go to the lowest id); their confidence is the chosen token's
probability under the *unmodified* fp32 softmax, as in the official loops. Sampled rows
use temperature, then top-k, then top-p, and report the sampled token's probability under
the tempered distribution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..config.enums import ConfidenceKind


@dataclass
class SelectionParams:
    """Per-row sampling settings of one step (rows = query positions needing logits)."""

    temperature: torch.Tensor  # [M] float32; 0 = greedy
    top_k: torch.Tensor  # [M] long; 0 = off
    top_p: torch.Tensor  # [M] float32; 1 = off
    generators: Optional[list[Optional[torch.Generator]]] = None  # per row, for sampled rows
    any_sampled: Optional[bool] = None  # host copy of ``(temperature > 0).any()``; None: read the device


def _confidence(probs: torch.Tensor, tokens: torch.Tensor, kind: ConfidenceKind) -> torch.Tensor:
    # probs: [M, V]; tokens: [M]
    chosen = probs.gather(1, tokens[:, None]).squeeze(1)
    if kind == ConfidenceKind.PROBABILITY:
        return chosen
    if kind == ConfidenceKind.MARGIN:
        top2 = probs.topk(2, dim=-1).values  # [M, 2]
        return top2[:, 0] - top2[:, 1]
    return (probs * probs.clamp_min(1e-30).log()).sum(-1)  # negative entropy


def select_tokens(logits: torch.Tensor, forbidden: torch.Tensor, params: SelectionParams,
                  confidence: ConfidenceKind = ConfidenceKind.PROBABILITY,
                  kernels: str = "torch") -> tuple[torch.Tensor, torch.Tensor]:
    """Choose one token per row. logits: [M, V]; forbidden: [V] bool. Returns (tokens [M], conf [M]).

    ``kernels`` (``runtime.kernels`` after validation): with ``"triton"`` on CUDA, an
    all-greedy step with probability confidence runs the one-pass Triton kernel (same
    function, no [M, V] probabilities materialized); anything else takes the path below.
    """
    any_sampled = params.any_sampled
    if any_sampled is None:
        any_sampled = bool((params.temperature > 0).any())  # a host sync; row_params gives it without one
    if (kernels == "triton" and logits.is_cuda and ConfidenceKind(confidence) == ConfidenceKind.PROBABILITY
            and not any_sampled):
        from ..kernels import get_ops

        return get_ops(logits.device, kernels).greedy_confidence(logits, forbidden)
    logits = logits.float()
    allowed_logits = logits.masked_fill(forbidden, float("-inf"))  # [M, V]
    tokens = allowed_logits.argmax(dim=-1)  # [M]
    probs = torch.softmax(logits, dim=-1)  # [M, V]
    if any_sampled:
        rows = (params.temperature > 0).nonzero().squeeze(1)
        t = params.temperature[rows][:, None]
        warped = _top_k_top_p(allowed_logits[rows] / t, params.top_k[rows], params.top_p[rows])
        tempered = torch.softmax(warped, dim=-1)  # [R, V]
        draws = []
        for i, row in enumerate(rows.tolist()):
            gen = params.generators[row] if params.generators else None
            draws.append(torch.multinomial(tempered[i], 1, generator=gen))
        picked = torch.cat(draws)
        tokens = tokens.index_copy(0, rows, picked)
        probs = probs.index_copy(0, rows, tempered)
    return tokens, _confidence(probs, tokens, confidence)


def _top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    # logits: [R, V]; top_k: [R] (0 = off); top_p: [R] (1 = off)
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(logits.shape[-1], device=logits.device)[None, :]
    k = torch.where(top_k > 0, top_k, logits.shape[-1])[:, None]
    drop = ranks >= k
    cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
    drop |= (cum - torch.softmax(sorted_logits, dim=-1)) >= top_p[:, None]  # keep the token crossing p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
