"""DMax soft parallel decoding (edit-capable LLaDA2 checkpoints).

Every step re-predicts every editable position of the block (positions after the prompt):
decided tokens are overwritten by the new prediction (edits); masks are filled left to
right while their confidence is at least ``accept_threshold`` (at least the leftmost one;
every mask when the block is out of steps). Decided positions are fed back next step as
soft inputs (top-k mixture plus the mask embedding). The block commits when a step changes
nothing or every editable position's top-1 probability reaches ``commit_confidence``, and at
the latest after ``max_steps_per_block`` steps (the last one fills every remaining mask).
"""

from __future__ import annotations

from typing import Any

import torch

from ..engine.batch import rows_on
from ..registry import AutoSampler
from .base import Decision, Sampler
from .blockwise import block_all, block_any, block_min, leftmost
from .select import select_tokens


@AutoSampler.register("dmax")
class DMaxSampler(Sampler):
    """Decisions of the DMax loop for a batch of blocks (one block per request)."""

    def decide(self, batch: Any, logits: torch.Tensor, reqs: list[Any], forbidden: torch.Tensor) -> list[Decision]:
        dev, cfg, s = logits.device, self.config, self.config.strategy
        db = rows_on(batch, dev)  # row / block tensors on the device, without a stream sync
        nb = db.block_forced.shape[0]
        block = db.row_block  # [M]
        pos = db.row_position  # [M]
        current = db.row_token  # [M]
        tokens, conf = select_tokens(logits, forbidden, self.row_params(batch, reqs, dev),
                                     kernels=self.kernels)  # [M], [M]
        editable = pos >= db.row_prompt_len  # [M]
        is_mask = editable & (current == cfg.model.mask_token_id)
        # Masks left to right while confident: accept positions before the first unconfident mask.
        low = is_mask & (conf < s.accept_threshold)
        big = torch.iinfo(torch.long).max
        first_low = block_min(torch.where(low, pos, big), block, nb, big)
        fill = is_mask & (pos < first_low[block])
        fill |= leftmost(is_mask, pos, block, nb) & ~block_any(fill, block, nb)[block]
        fill |= is_mask & db.block_force_all[block]
        edit = editable & ~is_mask & (tokens != current)
        after = torch.where(fill | edit, tokens, current)  # [M]
        masks_left = block_any(editable & (after == cfg.model.mask_token_id), block, nb)  # [NB]
        changed = block_any(fill | edit, block, nb)
        confident = block_all(~editable | (conf >= s.commit_confidence), block, nb)
        out_of_steps = db.block_force_all  # [NB]: the last step the block may take
        commit = ~masks_left & (confident | ~changed | out_of_steps)  # [NB]
        # Soft inputs for every decided editable position: top-k of the allowed distribution.
        k = s.token_merge_top_k
        probs = torch.softmax(logits.float(), dim=-1).masked_fill(forbidden, 0.0)
        top_p, top_i = probs.topk(k, dim=-1)  # [M, k]
        top_i[:, 0], top_p[:, 0] = tokens, conf  # the soft mix centres on the chosen token
        soft = editable & (after != cfg.model.mask_token_id)
        rows = torch.stack([db.row_request.double(), pos.double(), current.double(), tokens.double(),
                            conf.double(), fill.double(), edit.double(), soft.double(), block.double()], 1)
        host = torch.cat([rows, top_i.double(), top_p.double()], 1).tolist()  # the one host transfer
        keep_open = (~commit).tolist()
        block_ids, block_req = batch.block_id.tolist(), batch.block_request.tolist()
        out = [Decision(state={"soft": {}, "refining": []}) for _ in reqs]
        for b, open_ in enumerate(keep_open):
            if open_:
                out[block_req[b]].state["refining"].append(block_ids[b])
        for r, p, cur, tok, c, f, e, sft, _b, *rest in host:
            d, p = out[int(r)], int(p)
            if f:
                d.fills.append((p, int(tok), c))
            elif e:
                d.edits.append((p, int(cur), int(tok), c))
            if sft:
                d.state["soft"][p] = ([int(t) for t in rest[:k]], rest[k:])
        return out
