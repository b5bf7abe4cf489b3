"""Edit sampling (LLaDA2.1-style) for pipelined block strategies.

Per block, over its editable positions (after the prompt):
- mask → token: masks whose confidence exceeds ``accept_threshold``; a forced block takes at
  least its best mask (the same gating as naive sampling);
- token → token: decided tokens whose new prediction differs with confidence above
  ``edit_threshold`` are rewritten;
- re-masking: decided tokens whose own probability under the new prediction falls below
  ``remask_threshold`` become masks again (0 disables);
- ``penalty_lambda`` is subtracted from the logit of the previous position's token first.
A block without masks stays open while a step still changes it; it commits after a step
that changes nothing, or when it reaches block_size + ``max_post_edit_steps`` steps (that
last step fills every remaining mask). ``stability`` (unchanged decided tokens / decided
tokens) feeds ``token_stability_threshold`` for starting the next block.
"""

from __future__ import annotations

from typing import Any

import torch

from ..engine.batch import rows_on
from ..registry import AutoSampler
from .accept import accept_masks
from .base import Decision, Sampler
from .blockwise import block_any, block_mean
from .select import select_tokens


@AutoSampler.register("edit")
class EditSampler(Sampler):
    """Mask-to-token fills plus token-to-token edits and re-masks, with one host transfer."""

    def decide(self, batch: Any, logits: torch.Tensor, reqs: list[Any], forbidden: torch.Tensor) -> list[Decision]:
        dev, cfg = logits.device, self.config
        sc, mask_id = cfg.sampling, cfg.model.mask_token_id
        db = rows_on(batch, dev)  # row / block tensors on the device, without a stream sync
        nb = db.block_forced.shape[0]
        block = db.row_block  # [M]
        pos, current = db.row_position, db.row_token  # [M], [M]
        logits = logits.float()
        if sc.penalty_lambda > 0:
            prev = db.row_prev_token
            has_prev = prev >= 0
            rows = has_prev.nonzero().squeeze(1)
            logits = logits.index_put((rows, prev[rows]), torch.full_like(rows, 0, dtype=logits.dtype)
                                      - sc.penalty_lambda, accumulate=True)
        tokens, conf = select_tokens(logits, forbidden, self.row_params(batch, reqs, dev), sc.confidence,
                                     kernels=self.kernels)
        editable = pos >= db.row_prompt_len
        is_mask = editable & (current == mask_id)
        threshold = torch.full((nb,), float(cfg.strategy.accept_threshold), device=dev)
        force_all = db.block_force_all
        fill = accept_masks(conf, is_mask, block, db.block_forced, threshold) | (is_mask & force_all[block])
        decided = editable & ~is_mask
        edit = decided & (tokens != current) & ((conf > sc.edit_threshold) | force_all[block])
        p_current = torch.softmax(logits, -1).gather(1, current.clamp_min(0)[:, None]).squeeze(1)
        remask = decided & ~edit & (p_current < sc.remask_threshold) & ~force_all[block]
        changed = block_any(fill | edit | remask, block, nb)
        masks_left = block_any((is_mask & ~fill) | remask, block, nb)
        keep_open = ~masks_left & changed & ~force_all  # [NB]: refine again next step
        stability = block_mean((~edit & ~remask).float(), decided.float(), block, nb)  # [NB]
        host = torch.stack([db.row_request.double(), pos.double(), current.double(), tokens.double(),
                            conf.double(), fill.double(), edit.double(), remask.double()], 1).tolist()
        per_block = torch.stack([keep_open.double(), stability.double()], 1).tolist()
        block_ids, block_req = batch.block_id.tolist(), batch.block_request.tolist()
        out = [Decision(state={"refining": [], "stability": {}}) for _ in reqs]
        for b, (open_, stab) in enumerate(per_block):
            d = out[block_req[b]]
            d.state["stability"][block_ids[b]] = stab
            if open_:
                d.state["refining"].append(block_ids[b])
        for r, p, cur, tok, c, f, e, rm in host:
            d, p = out[int(r)], int(p)
            if f:
                d.fills.append((p, int(tok), c))
            elif e:
                d.edits.append((p, int(cur), int(tok), c))
            elif rm:
                d.remasks.append(p)
        return out
