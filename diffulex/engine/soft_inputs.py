"""Soft input embeddings: a probability-weighted mix of token embeddings fed back to the model.

DMax feeds decided positions back as ``sum_k p_k E[t_k] + (1 - sum_k p_k) E[mask]`` (the
residual probability goes to the mask embedding), optionally rescaled to the
probability-weighted norm of its parts, and blended with the hard token's embedding by
``weight`` (1.0: pure mixture).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SoftInputs:
    """Which flat-batch tokens get a mixture, and of what."""

    index: torch.Tensor  # [S] long: flat token index in the batch
    ids: torch.Tensor  # [S, k] long: top-k token ids
    probs: torch.Tensor  # [S, k] float32: their probabilities
    mask_id: int
    renormalize: bool = True
    weight: float = 1.0

    def to(self, device: torch.device) -> "SoftInputs":
        return SoftInputs(self.index.to(device), self.ids.to(device), self.probs.to(device), self.mask_id,
                          self.renormalize, self.weight)

    def select_tokens(self, tok: torch.Tensor, num_tokens: int) -> "SoftInputs":
        """The mixtures of the flat-batch tokens ``tok`` (a data-parallel replica's slice), with
        ``index`` renumbered to positions in ``tok``; ``num_tokens`` is the full batch's N."""
        new_pos = torch.full((num_tokens,), -1, dtype=torch.long)
        new_pos[tok] = torch.arange(tok.numel())
        where = new_pos[self.index.cpu()]  # [S]
        keep = where >= 0
        return SoftInputs(where[keep].to(self.index.device), self.ids[keep.to(self.ids.device)],
                          self.probs[keep.to(self.probs.device)], self.mask_id, self.renormalize, self.weight)

    def embed(self, model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings [N, H] with the mixtures written at ``index``."""
        hard = model.embed(input_ids)  # [N, H]
        if self.index.numel() == 0:
            return hard
        parts = model.embed(self.ids).float()  # [S, k, H]
        mask = model.embed(torch.full_like(self.index, self.mask_id)).float()  # [S, H]
        p = self.probs.float()  # [S, k]
        residual = (1.0 - p.sum(-1)).clamp_min(0.0)  # [S]
        mix = (p[..., None] * parts).sum(1) + residual[:, None] * mask  # [S, H]
        if self.renormalize:
            target = (p * parts.norm(dim=-1)).sum(-1) + residual * mask.norm(dim=-1)  # [S]
            mix = mix * (target / mix.norm(dim=-1).clamp_min(1e-12))[:, None]
        out = self.weight * mix + (1.0 - self.weight) * hard[self.index].float()
        return hard.index_copy(0, self.index, out.to(hard.dtype))
