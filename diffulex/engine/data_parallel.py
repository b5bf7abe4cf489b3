"""Data parallelism: one engine step's requests spread over the DP replicas.

A replica is the ``tp x ep`` ranks sharing a data-parallel index; rank ``d * tp * ep`` drives
replica ``d`` (rank 0, the caller, drives replica 0). Each request is pinned to replica
``req_id % dp`` for its whole life, so its KV pages are always written and read by the same
replica. Every replica allocates its own cache tensors of the same page count while rank 0's
KV manager hands out page ids from one pool: the same page id on two replicas is two
different memories, and a page id belongs to one request at a time, so requests never
collide. Prefix caching shares pages *between* requests: the keys of each replica's pages are
hashed in that replica's namespace, so sharing never crosses replicas.

The packed batch of the step is sliced per replica (requests, tokens and logits rows keep
their relative order), each replica's ranks run their slice, the replica drivers send their
logits back to rank 0 over the control channel (pipes, or gloo under torchrun), and the rows
are put back in the batch's order for the sampler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..layers.attention_metadata import AttentionMetadata


def replica_of(req_id: int, dp: int) -> int:
    """The data-parallel replica that holds request ``req_id`` for its lifetime."""
    return req_id % dp


def can_split(batch: Any) -> bool:
    """Whether the step may be split over replicas.

    Not when a strategy extra cannot be sliced by token (see :func:`slice_extras`). Prefix
    caching is fine: each replica hashes its pages in its own namespace (the engine sets
    ``req.cache_namespace``), so a request only reuses pages its own replica wrote.
    """
    n = batch.input_ids.shape[0]
    return all(_sliceable(v, n) for v in batch.extras.values())


def _sliceable(value: Any, num_tokens: int) -> bool:
    return hasattr(value, "select_tokens") or (torch.is_tensor(value) and value.dim() >= 1
                                                 and value.shape[0] == num_tokens)


def slice_extras(extras: dict, tok: torch.Tensor, num_tokens: int) -> dict:
    """A replica's strategy extras: token-indexed tensors (first dim = the batch's ``N`` tokens,
    e.g. DiffusionGemma's canvas mask and self-conditioning rows) are gathered at ``tok``;
    objects with ``select_tokens(tok, num_tokens)`` (e.g. :class:`SoftInputs`) slice themselves."""
    out = {}
    for key, value in extras.items():
        if hasattr(value, "select_tokens"):
            out[key] = value.select_tokens(tok, num_tokens)
        else:
            out[key] = value[tok.to(value.device)]
    return out


@dataclass
class ReplicaSlice:
    """One replica's part of a step: the runner inputs and the full-batch logits rows it fills."""

    replica: int
    input_ids: torch.Tensor  # [n]
    positions: torch.Tensor  # [n]
    meta: AttentionMetadata
    rows: torch.Tensor  # [m] long: rows of the full batch's logits, in the slice's order
    extras: dict  # the strategy extras of these tokens (see slice_extras)


def split_batch(batch: Any, owners: list[int], dp: int) -> list[ReplicaSlice]:
    """Slice ``batch`` by request owner (``owners[r]`` = replica of request ``r``); empty replicas omitted."""
    meta = batch.meta
    cu = meta.cu_seqlens_q.tolist()
    row_req = batch.row_request
    logits_idx = meta.logits_indices
    out = []
    for d in range(dp):
        sel = [r for r, o in enumerate(owners) if o == d]
        if not sel:
            continue
        tok = torch.cat([torch.arange(cu[r], cu[r + 1]) for r in sel])  # [n]
        new_cu = [0]
        for r in sel:
            new_cu.append(new_cu[-1] + cu[r + 1] - cu[r])
        shift = torch.zeros(len(owners), dtype=torch.long)  # per request: new start - old start
        for j, r in enumerate(sel):
            shift[r] = new_cu[j] - cu[r]
        mine = torch.tensor([owners[r] == d for r in range(len(owners))])
        rows = torch.nonzero(mine[row_req], as_tuple=False).flatten()  # [m], ascending
        sel_t = torch.tensor(sel, dtype=torch.long)
        sub = AttentionMetadata(
            cu_seqlens_q=torch.tensor(new_cu, dtype=torch.long), positions=meta.positions[tok],
            context_lens=meta.context_lens[sel_t], page_table=meta.page_table[sel_t],
            slot_mapping=meta.slot_mapping[tok], key_lo=meta.key_lo[tok], key_hi=meta.key_hi[tok],
            cache_only=meta.cache_only[sel_t],
            logits_indices=logits_idx[rows] + shift[row_req[rows]], page_size=meta.page_size)
        out.append(ReplicaSlice(d, batch.input_ids[tok], batch.positions[tok], sub, rows,
                                slice_extras(batch.extras, tok, batch.input_ids.shape[0])))
    return out


def forward_data_parallel(runner: Any, workers: Any, replica_size: int, dp: int,
                          reqs: list[Any], batch: Any) -> torch.Tensor:
    """Run each replica on its requests; logits ``[M, V]`` in the full batch's row order.

    ``runner`` is rank 0's model runner (replica 0's driver); ``workers`` (a
    :class:`~diffulex.engine.workers.Workers`) drives ranks 1..world-1, worker ``i`` being
    rank ``i + 1``.
    """
    owners = [replica_of(req.req_id, dp) for req in reqs]
    slices = split_batch(batch, owners, dp)
    sent: list[tuple[int, ReplicaSlice]] = []  # (worker index, slice)
    for s in slices:
        for rank in range(s.replica * replica_size, (s.replica + 1) * replica_size):
            if rank == 0:
                continue
            workers.send_to(rank - 1, "run", s.input_ids, s.positions, s.meta, s.extras)
            sent.append((rank - 1, s))
    results: dict[int, torch.Tensor] = {}
    error: Optional[BaseException] = None
    try:
        local = next((s for s in slices if s.replica == 0), None)
        if local is not None:
            results[0] = runner.run(local.input_ids, local.positions, local.meta, local.extras)
    except BaseException as exc:  # drain the workers before re-raising, to keep the channels in step
        error = exc
    for index, s in sent:
        try:
            got = workers.expect(index, "ok")
        except BaseException as exc:
            error = error or exc
            continue
        if index + 1 == s.replica * replica_size:
            results[s.replica] = got
    if error is not None:
        raise error
    first = results[slices[0].replica]
    logits = torch.empty((batch.row_request.numel(), first.shape[-1]), dtype=first.dtype, device=first.device)
    for s in slices:
        logits[s.rows.to(logits.device)] = results[s.replica].to(logits.device)
    return logits
