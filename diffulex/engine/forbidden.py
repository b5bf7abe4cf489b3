"""Token ids a sampler must never choose."""

from __future__ import annotations

from typing import Any

import torch


def forbidden_tokens(config: Any, vocab: int, device: torch.device) -> torch.Tensor:
    """[V] bool: the mask token and padded vocab rows (beyond the tokenizer) are never chosen."""
    forbid = torch.zeros(vocab, dtype=torch.bool, device=device)
    if config.model.mask_token_id is not None:  # DiffusionGemma's canvas loop has no mask token
        forbid[config.model.mask_token_id] = True
    forbid[min(config.tokenizer_vocab_size, vocab):] = True
    return forbid
