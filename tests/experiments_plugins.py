"""Classes that experiment tests plug in from the command line (``components.*=experiments_plugins.X``).

They live outside ``diffulex/`` on purpose: the tests pin that a researcher's own class,
importable from PYTHONPATH, replaces an engine component without editing the package.
"""

from __future__ import annotations

from typing import Any

import torch

from diffulex.sampling.base import Decision, Sampler


class LeftmostSampler(Sampler):
    """Fill exactly one mask per request and step: the leftmost one, with its greedy token."""

    def decide(self, batch: Any, logits: torch.Tensor, reqs: list[Any], forbidden: torch.Tensor) -> list[Decision]:
        probs = torch.softmax(logits.float().masked_fill(forbidden, float("-inf")), dim=-1)  # [M, V]
        conf, tokens = probs.max(dim=-1)  # [M], [M]
        current = batch.input_ids.to(logits.device)[batch.meta.logits_indices.to(logits.device)]  # [M]
        is_mask = current == self.config.model.mask_token_id
        position = batch.row_position.to(logits.device).masked_fill(~is_mask, torch.iinfo(torch.long).max)
        out = [Decision() for _ in reqs]
        for r in range(len(reqs)):
            rows = (batch.row_request.to(logits.device) == r).nonzero().squeeze(1)
            if rows.numel() == 0 or not is_mask[rows].any():
                continue
            row = rows[position[rows].argmin()]
            out[r].fills.append((int(batch.row_position[row]), int(tokens[row]), float(conf[row])))
        return out


class ExplodingSampler(Sampler):
    """Fails on the first decode step, after the engine is built (a job that dies mid-generate)."""

    def decide(self, batch: Any, logits: torch.Tensor, reqs: list[Any], forbidden: torch.Tensor) -> list[Decision]:
        raise RuntimeError("ExplodingSampler: this job is meant to fail")


# --- docs/strategies.md "A custom sampler" shows this class verbatim (tests/test_custom_sampler.py checks) ---
from diffulex.sampling import Decision, Sampler, fills_per_request, rows_on, select_tokens, top_quota  # noqa: E402


class FixedKSampler(Sampler):
    """Fill the k most confident masks of every in-flight block per step (a fixed schedule)."""

    def __init__(self, config: Any, k: int = 2) -> None:
        super().__init__(config)
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"FixedKSampler: k={k!r}, expected an int >= 1")
        self.k = k

    def decide(self, batch: Any, logits: torch.Tensor, reqs: list[Any], forbidden: torch.Tensor) -> list[Decision]:
        db = rows_on(batch, logits.device)  # the batch's row / block tensors, on the logits' device
        params = self.row_params(batch, reqs, logits.device)  # each request's temperature / top-k / top-p
        tokens, conf = select_tokens(logits, forbidden, params, self.config.sampling.confidence)  # [M], [M]
        is_mask = db.row_token == self.config.model.mask_token_id  # [M]
        quota = torch.full_like(db.block_forced, self.k, dtype=torch.long)  # [NB]: k per block
        take = top_quota(conf, is_mask, db.row_block, quota)  # [M]: the k best masks of each block
        fills = fills_per_request(len(reqs), take, db.row_request, db.row_position, tokens, conf)  # one sync
        return [Decision(fills=f) for f in fills]
