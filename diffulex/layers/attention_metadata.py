"""The one interface between the engine and the attention layers of a forward pass."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass
class AttentionMetadata:
    """A flat varlen batch of ``S`` sequences holding ``N`` query tokens in total.

    Every tensor lives on the model's device. The visibility rule of a query token is the
    half-open interval ``key_lo <= p < key_hi`` of absolute key positions ``p``: block-causal
    is ``key_hi = (pos // B + 1) * B``, a prefix-full prompt sets ``key_hi`` to the prompt
    end, plain causal ``key_hi = pos + 1``, and a sliding window raises ``key_lo``.

    In every layer the new K/V of the batch is written at ``slot_mapping`` first; attention
    runs after. The keys of sequence ``s`` are the cached positions ``[0, context_lens[s])``
    followed by its own new query tokens (at ``positions``), except when
    ``cache_only[s]`` is set: then they are the cached positions only (the "dual cache" mode,
    in which the new K/V has just replaced stale cache entries).
    """

    cu_seqlens_q: torch.Tensor  # [S+1] long: query spans of each sequence in the flat batch
    positions: torch.Tensor  # [N] long: absolute position of every query token
    context_lens: torch.Tensor  # [S] long: cached keys of each sequence, positions [0, len)
    page_table: torch.Tensor  # [S, max_pages] long: page ids, -1 padding
    slot_mapping: torch.Tensor  # [N] long: cache slot of each new K/V, -1 = not written
    key_lo: torch.Tensor  # [N] long: first visible key position (inclusive)
    key_hi: torch.Tensor  # [N] long: end of visible key positions (exclusive)
    cache_only: torch.Tensor  # [S] bool: keys come only from the cache
    logits_indices: torch.Tensor  # [M] long: query tokens whose logits are needed
    page_size: int

    def for_forward(self) -> "AttentionMetadata":
        """A shallow copy with an empty per-forward ``memo``.

        Kernels store values derived only from the metadata in it (e.g. the attention grid's
        block map), so the first layer computes them and the others reuse them. A fresh copy
        per forward keeps the memo from outliving the call: inside a CUDA graph capture the
        derived values are computed, and so captured, by that forward.
        """
        copy = replace(self)
        copy.memo = {}
        return copy

    @property
    def num_seqs(self) -> int:
        return self.context_lens.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.positions.shape[0]

    def validate(self) -> None:
        """Check shapes, dtypes and the cross-field rules; raise ValueError on the first breach.

        Reads tensors back to the host: meant for tests and debugging, not the hot path.
        """
        s, n = self.num_seqs, self.num_tokens
        shapes = {
            "cu_seqlens_q": (self.cu_seqlens_q, (s + 1,)),
            "positions": (self.positions, (n,)),
            "context_lens": (self.context_lens, (s,)),
            "slot_mapping": (self.slot_mapping, (n,)),
            "key_lo": (self.key_lo, (n,)),
            "key_hi": (self.key_hi, (n,)),
            "cache_only": (self.cache_only, (s,)),
        }
        for name, (t, shape) in shapes.items():
            if tuple(t.shape) != shape:
                raise ValueError(f"AttentionMetadata.{name}: shape {tuple(t.shape)}, expected {shape}")
        for name in ("cu_seqlens_q", "positions", "context_lens", "page_table", "slot_mapping",
                     "key_lo", "key_hi", "logits_indices"):
            if getattr(self, name).dtype != torch.long:
                raise ValueError(f"AttentionMetadata.{name}: dtype {getattr(self, name).dtype}, expected torch.long")
        if self.cache_only.dtype != torch.bool:
            raise ValueError(f"AttentionMetadata.cache_only: dtype {self.cache_only.dtype}, expected torch.bool")
        if self.page_table.dim() != 2 or self.page_table.shape[0] != s:
            raise ValueError(f"AttentionMetadata.page_table: shape {tuple(self.page_table.shape)}, expected [{s}, max_pages]")
        if self.page_size < 1:
            raise ValueError(f"AttentionMetadata.page_size: {self.page_size}, must be >= 1")
        cu = self.cu_seqlens_q
        if cu[0].item() != 0 or cu[-1].item() != n or bool((cu[1:] < cu[:-1]).any()):
            raise ValueError(f"AttentionMetadata.cu_seqlens_q: {cu.tolist()} must rise from 0 to N={n}")
        if bool((self.key_lo > self.key_hi).any()):
            raise ValueError("AttentionMetadata: key_lo > key_hi for some query token")
        pages_needed = (self.context_lens + self.page_size - 1) // self.page_size
        if bool((pages_needed > self.page_table.shape[1]).any()):
            raise ValueError("AttentionMetadata.context_lens: more pages needed than page_table holds")
        for i in range(s):
            if bool((self.page_table[i, : pages_needed[i]] < 0).any()):
                raise ValueError(f"AttentionMetadata.page_table: sequence {i} has a -1 page inside its context")
        if self.logits_indices.numel() and (
            int(self.logits_indices.min()) < 0 or int(self.logits_indices.max()) >= n
        ):
            raise ValueError(f"AttentionMetadata.logits_indices: out of range [0, {n})")
        if bool((self.cache_only & (self.context_lens == 0)).any()):
            raise ValueError("AttentionMetadata.cache_only: set for a sequence with an empty cache")

    @classmethod
    def for_dense(
        cls,
        seq_lens: list[int],
        block_size: int | None = None,
        device: torch.device | str = "cpu",
    ) -> "AttentionMetadata":
        """Metadata for whole sequences without a cache (positions start at 0).

        ``block_size`` None means fully bidirectional; otherwise block-causal with that
        block length. Every token's logits are requested.
        """
        lens = torch.tensor(seq_lens, dtype=torch.long)
        cu = torch.zeros(len(seq_lens) + 1, dtype=torch.long)
        cu[1:] = lens.cumsum(0)
        positions = torch.cat([torch.arange(n, dtype=torch.long) for n in seq_lens])
        seq_end = torch.repeat_interleave(lens, lens)
        if block_size is None:
            key_hi = seq_end
        else:
            key_hi = torch.minimum((positions // block_size + 1) * block_size, seq_end)
        n, s = int(cu[-1]), len(seq_lens)
        return cls(
            cu_seqlens_q=cu.to(device),
            positions=positions.to(device),
            context_lens=torch.zeros(s, dtype=torch.long, device=device),
            page_table=torch.full((s, 0), -1, dtype=torch.long, device=device),
            slot_mapping=torch.full((n,), -1, dtype=torch.long, device=device),
            key_lo=torch.zeros(n, dtype=torch.long, device=device),
            key_hi=key_hi.to(device),
            cache_only=torch.zeros(s, dtype=torch.bool, device=device),
            logits_indices=torch.arange(n, dtype=torch.long, device=device),
            page_size=1,
        )
