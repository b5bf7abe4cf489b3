"""Plain-PyTorch greedy choice + confidence (oracle of the Triton one-pass kernel)."""

from __future__ import annotations

import torch


def greedy_confidence(logits: torch.Tensor, forbidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits: [M, V]``, ``forbidden: [V]`` bool -> ``(tokens [M] long, conf [M] fp32)``.

    The greedy path of ``sampling.select.select_tokens``: argmax over allowed ids (ties ->
    lowest id), confidence = the chosen token's probability under the full fp32 softmax.
    """
    logits = logits.float()
    tokens = logits.masked_fill(forbidden, float("-inf")).argmax(dim=-1)  # [M]
    conf = torch.softmax(logits, dim=-1).gather(1, tokens[:, None]).squeeze(1)  # [M]
    return tokens, conf
