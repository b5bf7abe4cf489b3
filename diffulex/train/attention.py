"""Dense masked attention for training: the engine's own model modules, differentiable.

Training runs the very modules the engine serves with (same weight names, same forward), but
swaps the attention op of their ``Attention`` layers for this one: a batch of ``S`` equal-length
sequences with an explicit ``[S, L, L]`` visibility mask (what the training objectives need,
e.g. a noisy copy attending to a clean copy of the same positions), computed by
``scaled_dot_product_attention``, no KV cache.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from diffulex.kernels import REFERENCE_OPS, KernelOps
from diffulex.layers.attention import Attention
from diffulex.layers.attention_metadata import AttentionMetadata


@dataclass
class TrainingMetadata(AttentionMetadata):
    """``AttentionMetadata`` of ``S`` sequences of ``L`` tokens each plus their mask.

    ``mask[s, q, k]``: query ``q`` of sequence ``s`` sees key ``k`` (both indices into the
    sequence, not positions); every query must see at least one key. A mask of one sequence
    (``[1, L, L]``) applies to all.
    """

    mask: torch.Tensor = None  # [S or 1, L, L] bool

    @classmethod
    def build(cls, positions: torch.Tensor, mask: torch.Tensor) -> "TrainingMetadata":
        """``positions: [S, L]`` long, ``mask: [S, L, L]`` bool -> metadata over the flat ``[S*L]`` batch."""
        s, n = positions.shape
        dev = positions.device
        flat = positions.reshape(-1)
        return cls(
            cu_seqlens_q=torch.arange(0, (s + 1) * n, n, device=dev), positions=flat,
            context_lens=torch.zeros(s, dtype=torch.long, device=dev),
            page_table=torch.zeros(s, 0, dtype=torch.long, device=dev),
            slot_mapping=torch.full_like(flat, -1), key_lo=torch.zeros_like(flat),
            key_hi=torch.zeros_like(flat), cache_only=torch.zeros(s, dtype=torch.bool, device=dev),
            logits_indices=torch.arange(s * n, device=dev), page_size=1, mask=mask)


def masked_attention(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, k_cache, v_cache,
                     meta: TrainingMetadata, scale: float, softcap: float | None = None) -> torch.Tensor:
    """The ``paged_attention`` signature over :class:`TrainingMetadata` (no cache) -> ``[N, Hq, D]``."""
    if k_cache is not None or not isinstance(meta, TrainingMetadata):
        raise ValueError("masked_attention: training attention takes TrainingMetadata and no KV cache")
    s = meta.num_seqs
    n, hq, d = q.shape[0] // s, q.shape[1], q.shape[2]
    hkv = k_new.shape[1]
    qs = q.view(s, n, hq, d).transpose(1, 2)  # [S, Hq, L, D]
    ks = k_new.view(s, n, hkv, d).transpose(1, 2).repeat_interleave(hq // hkv, dim=1)  # [S, Hq, L, D]
    vs = v_new.view(s, n, hkv, d).transpose(1, 2).repeat_interleave(hq // hkv, dim=1)
    if softcap is None:
        o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=meta.mask[:, None], scale=scale)
    else:
        scores = torch.tanh((qs @ ks.transpose(-1, -2)) * scale / softcap) * softcap  # [S, Hq, L, L]
        o = scores.masked_fill(~meta.mask[:, None], float("-inf")).softmax(-1) @ vs
    return o.transpose(1, 2).reshape(s * n, hq, d)  # [N, Hq, D]


TRAINING_OPS: KernelOps = dataclasses.replace(REFERENCE_OPS, name="training", paged_attention=masked_attention)


def use_training_attention(model: torch.nn.Module) -> None:
    """Point every ``Attention`` layer of ``model`` at :data:`TRAINING_OPS` (others keep the reference ops)."""
    for module in model.modules():
        if isinstance(module, Attention):
            module.kernels = TRAINING_OPS
