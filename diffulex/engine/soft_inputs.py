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
        out = mix_embeddings(model, self.ids, self.probs, hard[self.index], self.mask_id, self.renormalize,
                             self.weight)  # [S, H]
        return hard.index_copy(0, self.index, out)

    def dense(self, num_tokens: int) -> dict[str, torch.Tensor]:
        """The same mixtures as fixed-shape per-token tensors (CUDA graphs need fixed shapes):
        ``soft_mask [N]`` bool, ``soft_ids [N, k]``, ``soft_probs [N, k]`` (zeros off the mask)."""
        k = self.ids.shape[1] if self.ids.dim() == 2 else 1
        dev = self.index.device
        mask = torch.zeros(num_tokens, dtype=torch.bool, device=dev)
        ids = torch.zeros(num_tokens, k, dtype=torch.long, device=dev)
        probs = torch.zeros(num_tokens, k, dtype=torch.float32, device=dev)
        mask[self.index] = True
        ids[self.index] = self.ids.reshape(-1, k).to(dev)
        probs[self.index] = self.probs.reshape(-1, k).float().to(dev)
        return {"soft_mask": mask, "soft_ids": ids, "soft_probs": probs}


def mix_embeddings(model: torch.nn.Module, ids: torch.Tensor, probs: torch.Tensor, hard: torch.Tensor,
                   mask_id: int, renormalize: bool, weight: float) -> torch.Tensor:
    """Rows ``sum_k p_k E[ids_k] + (1 - sum_k p_k) E[mask]`` (optionally renormalized), blended
    with the hard rows by ``weight``: ``ids, probs: [S, k]``, ``hard: [S, H]`` -> ``[S, H]`` (hard's dtype)."""
    parts = model.embed(ids).float()  # [S, k, H]
    mask = model.embed(torch.full_like(ids[:, 0], mask_id)).float()  # [S, H]
    p = probs.float()  # [S, k]
    residual = (1.0 - p.sum(-1)).clamp_min(0.0)  # [S]
    mix = (p[..., None] * parts).sum(1) + residual[:, None] * mask  # [S, H]
    if renormalize:
        target = (p * parts.norm(dim=-1)).sum(-1) + residual * mask.norm(dim=-1)  # [S]
        mix = mix * (target / mix.norm(dim=-1).clamp_min(1e-12))[:, None]
    return (weight * mix + (1.0 - weight) * hard.float()).to(hard.dtype)


def embed_dense(model: torch.nn.Module, input_ids: torch.Tensor, soft_mask: torch.Tensor, soft_ids: torch.Tensor,
                soft_probs: torch.Tensor, mask_id: int, renormalize: bool, weight: float) -> torch.Tensor:
    """:meth:`SoftInputs.embed` from the dense form: every row is mixed, rows off ``soft_mask``
    keep their hard embedding. ``input_ids [N]`` -> ``[N, H]``; no host sync (graph-safe)."""
    hard = model.embed(input_ids)  # [N, H]
    mixed = mix_embeddings(model, soft_ids, soft_probs, hard, mask_id, renormalize, weight)  # [N, H]
    return torch.where(soft_mask[:, None], mixed, hard)
