"""Padded shape buckets for the decode-step CUDA graphs (see :mod:`diffulex.layers.graphs`).

A captured graph serves one step shape: ``N`` query tokens in ``S`` sequences (plus the
strategy inputs' shapes). Decode steps come in many shapes (d2f / buffered blocks, prompts
of different lengths, requests finishing at different times), so graphs of exact shapes
would be many and rarely reused. :class:`GraphBuckets` pads a step, on the host before its
one host→device copy (into the graph's :class:`~diffulex.layers.graph_inputs.StaticInputs`),
to a bucket shape:

- sequences: ``S -> S_b``, the smallest entry of ``runtime.cuda_graph_batch_sizes`` that is
  ``>= S`` (``>= S + 1`` when tokens are padded: the pad tokens need a sequence of their own);
- tokens: ``N -> N_b``, the smallest value of the ladder ``g * L`` that is ``>= N``, ``g``
  the token granularity (the strategy's block size) and ``L`` = 1..8, then four steps per
  doubling (10, 12, 14, 16, 20, 24, 28, 32, 40, ...): at most 25 % pad tokens, and
  ``O(log)`` token buckets instead of one per multiple of ``g`` (each graph keeps its output
  buffer, so the count of shapes is also memory).

What the padding looks like (real rows first, so the real step is a prefix of every tensor):

- the ``N_b - N`` pad tokens all belong to ONE extra sequence (index ``S``), so no real
  sequence sees them, and they are all alike: token id 0, position 0, ``key_lo 0``,
  ``key_hi 1``, ``slot_mapping -1`` (never written to the KV cache). Identical tokens give
  identical hidden states, so an MoE router sends them all to the same top-k experts (at
  most top-k extra experts per layer);
- every pad sequence (the token one and the empty ones up to ``S_b``) has context 0,
  ``cache_only`` False and a page-table row of -1; the empty ones have 0 query tokens
  (``cu_seqlens_q`` repeats ``N_b``);
- ``logits_indices`` is unchanged: it only names real tokens, so the logits come out as for
  the unpadded step;
- per-token strategy inputs (``[N, ...]``: dmax's dense soft inputs, DiffusionGemma's canvas
  mask and self-conditioning embeddings) get zero / False rows (:meth:`GraphBuckets.pad_rows`):
  a pad token is a plain token (no soft mix, an encoder token for DiffusionGemma).

Only steps that look like decode steps are bucketed: at most ``max_seq_tokens`` query tokens
per sequence (a longer one is a prompt being prefilled), ``S_b`` within the bucket list and
``N_b <= max_tokens``; any other step (and any step the graphs decline) runs eagerly, unpadded,
through the runner's staging copy. The checks read the host copy of
``cu_seqlens_q`` (no GPU sync); steps whose metadata is already on the device are not bucketed.

The engine's limits (:meth:`GraphBuckets.for_config`): ``max_seq_tokens = (buffer + 1) * block``
(the blocks in flight plus the just-finished block whose K/V the step writes) and
``max_tokens = token_bucket(min(S_max * max_seq_tokens, runtime.max_num_batched_tokens))``,
``S_max`` the largest bucket: the bucket of every decode step the scheduler can make (it never
feeds more than ``max_num_batched_tokens`` tokens), e.g. 64 x 64 = 4,096 tokens for block 32,
buffer 1 (a whole block accepted per step: each sequence forwards the finished block with the
new one).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, replace
from typing import Any

import torch

# Per-token metadata fields (shape [N]) and the value of a pad token in each.
_PAD_TOKEN = {"positions": 0, "slot_mapping": -1, "key_lo": 0, "key_hi": 1}
PAD_TOKEN_ID = 0


@dataclass(frozen=True)
class Bucket:
    """A step's real shape and the bucket shape it is padded to."""

    num_seqs: int  # S: real sequences
    num_tokens: int  # N: real query tokens
    padded_seqs: int  # S_b >= S (> S when there are pad tokens)
    padded_tokens: int  # N_b >= N, a multiple of the granularity

    @property
    def padded(self) -> bool:
        return self.padded_seqs != self.num_seqs or self.padded_tokens != self.num_tokens


class GraphBuckets:
    """Chooses a step's bucket and pads its host inputs to it."""

    def __init__(self, batch_sizes: list[int], granularity: int | None, max_seq_tokens: int,
                 max_tokens: int) -> None:
        self.batch_sizes = sorted(set(int(b) for b in batch_sizes))
        self.granularity = max(1, int(granularity or 1))  # g
        self.max_seq_tokens = int(max_seq_tokens)
        self.max_tokens = int(max_tokens)

    @classmethod
    def for_config(cls, config: Any) -> "GraphBuckets":
        """The engine's buckets: ``strategy`` block / buffer sizes, ``runtime`` bucket list and token budget."""
        s, rt = config.strategy, config.runtime
        block, buffer = s.block_size or 1, getattr(s, "buffer_size", None) or 1
        seq_tokens = (buffer + 1) * block  # decode: the blocks in flight plus one just-finished block
        buckets = cls(rt.cuda_graph_batch_sizes, granularity=block, max_seq_tokens=seq_tokens, max_tokens=0)
        # Every decode step: at most S_max sequences of seq_tokens, at most the scheduler's budget.
        most = min(max(buckets.batch_sizes) * seq_tokens, int(rt.max_num_batched_tokens))
        buckets.max_tokens = buckets.token_bucket(most)
        return buckets

    # -- the rules ------------------------------------------------------------------------
    def choose(self, meta: Any) -> Bucket | None:
        """The bucket of a step, or None (run it eagerly, unpadded). Reads host tensors only."""
        cu = meta.cu_seqlens_q  # [S+1]
        if cu.device.type != "cpu":
            return None  # reading it would sync with the device
        s = cu.shape[0] - 1
        if s < 1:
            return None
        cu = cu.numpy()  # numpy: a few scalar ops, ~10x cheaper than torch's on the host
        n = int(cu[-1])
        if n < 1 or int((cu[1:] - cu[:-1]).max()) > self.max_seq_tokens:
            return None  # a prompt being prefilled
        n_b = self.token_bucket(n)
        i = bisect.bisect_left(self.batch_sizes, s + (n_b > n))  # the pad tokens take a sequence
        if i == len(self.batch_sizes) or n_b > self.max_tokens:
            return None
        return Bucket(s, n, self.batch_sizes[i], n_b)

    def token_bucket(self, n: int) -> int:
        """``N_b``: the smallest ``g * L >= n``, ``L`` in 1..8 then four steps per doubling."""
        units = -(-n // self.granularity)  # ceil(n / g)
        if units > 8:
            step = 1 << (units.bit_length() - 3)  # a quarter of the octave [2^k, 2^(k+1)) holding units
            units = -(-units // step) * step
        return units * self.granularity

    def shapes(self) -> list[tuple[int, int]]:
        """Every ``(S_b, N_b)`` a decode step can be padded to (an upper bound: some may never occur)."""
        out = []
        for s_b in self.batch_sizes:
            most = min(self.max_tokens, s_b * self.max_seq_tokens)
            sizes = sorted({self.token_bucket(n) for n in range(1, most + 1)})
            out.extend((s_b, n_b) for n_b in sizes if n_b <= self.max_tokens)
        return out

    # -- padding --------------------------------------------------------------------------
    def pad(self, bucket: Bucket, input_ids: torch.Tensor, positions: torch.Tensor,
            meta: Any) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """``input_ids, positions: [N]`` and ``meta`` (host tensors) padded to ``[N_b]`` / ``S_b``
        sequences; the real rows come first, unchanged."""
        if not bucket.padded:
            return input_ids, positions, meta
        s, n, s_b, n_b = bucket.num_seqs, bucket.num_tokens, bucket.padded_seqs, bucket.padded_tokens
        extra_tok, extra_seq = n_b - n, s_b - s

        def tokens(t: torch.Tensor, value: int) -> torch.Tensor:  # [N] -> [N_b]
            return torch.cat([t, t.new_full((extra_tok,), value)]) if extra_tok else t

        def seqs(t: torch.Tensor, value: Any) -> torch.Tensor:  # [S, ...] -> [S_b, ...]
            return torch.cat([t, t.new_full((extra_seq, *t.shape[1:]), value)])

        cu = meta.cu_seqlens_q  # [S+1] -> [S_b+1]: the pad tokens' sequence, then empty ones
        ends = [n_b] * extra_seq
        cu = torch.cat([cu, torch.tensor(ends, dtype=cu.dtype)])
        fields = {name: tokens(getattr(meta, name), value) for name, value in _PAD_TOKEN.items()}
        fields.update(cu_seqlens_q=cu, context_lens=seqs(meta.context_lens, 0),
                      cache_only=seqs(meta.cache_only, False), page_table=seqs(meta.page_table, -1))
        return tokens(input_ids, PAD_TOKEN_ID), tokens(positions, _PAD_TOKEN["positions"]), replace(meta, **fields)

    @staticmethod
    def pad_rows(bucket: Bucket, value: torch.Tensor) -> torch.Tensor:
        """A per-token strategy input ``[N, ...]`` padded with zero (False) rows to ``[N_b, ...]``."""
        extra = bucket.padded_tokens - value.shape[0]
        if extra <= 0:
            return value
        return torch.cat([value, value.new_zeros((extra, *value.shape[1:]))])


__all__ = ["Bucket", "GraphBuckets", "PAD_TOKEN_ID"]
