"""Turn one forward's logits into per-request decisions (one host transfer per step)."""

from __future__ import annotations

from typing import Any

import torch

from ..sampling import SelectionParams, accept_masks, select_tokens
from .batch import StepBatch


def forbidden_tokens(config: Any, vocab: int, device: torch.device) -> torch.Tensor:
    """[V] bool: the mask token and padded vocab rows (beyond the tokenizer) are never chosen."""
    forbid = torch.zeros(vocab, dtype=torch.bool, device=device)
    forbid[config.model.mask_token_id] = True
    forbid[min(config.tokenizer_vocab_size, vocab):] = True
    return forbid


def decide(batch: StepBatch, logits: torch.Tensor, reqs: list[Any], config: Any,
           forbidden: torch.Tensor) -> list[list[tuple[int, int, float]]]:
    """Accepted (position, token, confidence) per request, in position order."""
    dev = logits.device
    row_req = batch.row_request.to(dev)  # [M]
    sp = [r.sampling_params for r in reqs]
    temp = torch.tensor([p.temperature for p in sp], dtype=torch.float32, device=dev)[row_req]
    top_k = torch.tensor([p.top_k for p in sp], dtype=torch.long, device=dev)[row_req]
    top_p = torch.tensor([p.top_p for p in sp], dtype=torch.float32, device=dev)[row_req]
    gens = [reqs[i].generator for i in batch.row_request.tolist()] if bool((temp > 0).any()) else None
    tokens, conf = select_tokens(logits, forbidden, SelectionParams(temp, top_k, top_p, gens),
                                 config.sampling.confidence)  # [M], [M]
    current = batch.input_ids.to(dev)[batch.meta.logits_indices.to(dev)]  # [M]
    is_mask = current == config.model.mask_token_id
    threshold = torch.full(batch.block_forced.shape, float(config.strategy.accept_threshold), device=dev)
    accept = accept_masks(conf, is_mask, batch.row_block.to(dev), batch.block_forced.to(dev), threshold)
    rows = accept.nonzero().squeeze(1)
    picked = torch.stack([row_req[rows].double(), batch.row_position.to(dev)[rows].double(),
                          tokens[rows].double(), conf[rows].double()], dim=1).tolist()  # the one host sync
    out: list[list[tuple[int, int, float]]] = [[] for _ in reqs]
    for r, pos, tok, c in picked:
        out[int(r)].append((int(pos), int(tok), float(c)))
    return out
