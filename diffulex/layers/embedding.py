"""Vocabulary-parallel token embedding and LM head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from diffulex.layers.linear import copy_checked
from diffulex.layers.parallel import TPGroup


class VocabParallelEmbedding(nn.Module):
    """Token embedding whose rows are split across ranks in contiguous ranges.

    The vocabulary is padded up to a multiple of the TP size; padded rows are zero and
    never looked up. Each rank embeds the ids it owns and the results are summed.
    """

    def __init__(self, vocab_size: int, hidden_size: int, tp: TPGroup = TPGroup(),
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.tp = tp
        self.vocab_size = vocab_size
        self.rows_per_rank = -(-vocab_size // tp.size)
        self.vocab_start = tp.rank * self.rows_per_rank
        self.vocab_end = min(vocab_size, self.vocab_start + self.rows_per_rank)
        self.weight = nn.Parameter(torch.zeros(self.rows_per_rank, hidden_size, dtype=dtype), requires_grad=False)
        self.weight.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id=None) -> None:
        if shard_id is not None:
            raise ValueError(f"{type(self).__name__} got shard_id {shard_id!r}")
        if loaded_weight.shape[0] != self.vocab_size:
            raise ValueError(f"shape mismatch: checkpoint has {loaded_weight.shape[0]} vocab rows, "
                             f"expected {self.vocab_size}")
        rows = self.vocab_end - self.vocab_start
        with torch.no_grad():
            copy_checked(param.data.narrow(0, 0, rows), loaded_weight.narrow(0, self.vocab_start, rows))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # input_ids: [N] -> [N, H]
        if self.tp.size == 1:
            return F.embedding(input_ids, self.weight)
        owned = (input_ids >= self.vocab_start) & (input_ids < self.vocab_end)  # [N]
        local_ids = torch.where(owned, input_ids - self.vocab_start, 0)
        y = F.embedding(local_ids, self.weight) * owned.unsqueeze(-1).to(self.weight.dtype)
        return self.tp.all_reduce(y)


class ParallelLMHead(VocabParallelEmbedding):
    """Output projection over a vocabulary split across ranks; returns full-vocab logits."""

    def __init__(self, vocab_size: int, hidden_size: int, tp: TPGroup = TPGroup(),
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__(vocab_size, hidden_size, tp, dtype)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # hidden: [M, H] -> logits: [M, V]
        logits = F.linear(hidden, self.weight)  # [M, V_local (padded)]
        return self.tp.all_gather_last(logits)[..., : self.vocab_size]
