"""Pack the scheduled requests of one step into a flat varlen batch.

Every request contributes the tokens [plan.start, plan.end) of its canvas. The result
carries one explicit :class:`AttentionMetadata` and, for the sampler, which logits row
belongs to which request, position and block (with the block's forcing and quota).

This runs once per engine step on the host, so it costs O(requests + spans) Python
operations plus a fixed number of array ops: per-token and per-row values are expanded
from per-request and per-run scalars (``np.repeat``) and gathers, and the only per-token
host work is copying canvas slices into one buffer at C speed. The array math is numpy
(a small numpy op costs well under a microsecond, a torch CPU op several); the results are
wrapped with ``torch.from_numpy`` without copies. ``tests/test_pack_batch.py`` checks it
against a straightforward per-token reference.
"""

from __future__ import annotations

import copy
import functools
from array import array
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..layers.attention_metadata import AttentionMetadata


@dataclass
class StepBatch:
    """Host-side tensors of one forward (moved to the device by the runner)."""

    input_ids: torch.Tensor  # [N]
    positions: torch.Tensor  # [N]
    meta: AttentionMetadata
    row_request: torch.Tensor  # [M] index into the step's request list
    row_position: torch.Tensor  # [M] absolute position predicted by the row
    row_token: torch.Tensor  # [M] the canvas token currently at that position
    row_block: torch.Tensor  # [M] global in-flight block index of the row (0..NB-1)
    block_forced: torch.Tensor  # [NB] bool
    block_quota: torch.Tensor  # [NB] long; -1 = threshold rule
    block_request: torch.Tensor  # [NB] index into the step's request list
    block_id: torch.Tensor  # [NB] the request's own block id
    block_force_all: torch.Tensor  # [NB] bool: fill every remaining mask this step
    block_min_fill: torch.Tensor  # [NB] long: masks a forced block takes at least (1: its best)
    row_prompt_len: torch.Tensor  # [M] prompt length of the row's request (positions below are fixed)
    row_prev_token: torch.Tensor  # [M] the canvas token at position - 1 (-1 at position 0)
    extras: dict  # strategy inputs for the model runner (e.g. soft_inputs), see ModelRunner.run
    multi_fill: bool = False  # host flag: some block's min_fill exceeds 1


_DEVICE_FIELDS = ("row_request", "row_position", "row_token", "row_block", "row_prompt_len", "row_prev_token",
                  "block_forced", "block_quota", "block_request", "block_id", "block_force_all", "block_min_fill")


def rows_on(batch: Any, device: torch.device) -> Any:
    """``batch`` with its row and block tensors on ``device`` (the sampler's inputs).

    A CUDA copy is one non-blocking transfer: a plain ``.to(device)`` of a host tensor
    synchronizes the stream, so a sampler doing it right after the forward would wait for
    the forward before launching its own kernels (which could otherwise queue behind it).
    On the CPU the batch itself is returned; a moved copy is cached on the batch (samplers
    may call this freely). Works for any object with the row / block attributes of
    :class:`StepBatch`.
    """
    device = torch.device(device)
    if device.type == "cpu":
        return batch
    cached = getattr(batch, "_rows_on", None)
    if cached is not None and cached[0] == device:
        return cached[1]
    parts = [getattr(batch, f).long() for f in _DEVICE_FIELDS]
    flat = host_to_device(torch.cat(parts), device)  # [sum of sizes]
    moved = copy.copy(batch)
    for f, t in zip(_DEVICE_FIELDS, flat.split([t.numel() for t in parts])):
        setattr(moved, f, t != 0 if getattr(batch, f).dtype == torch.bool else t)
    batch._rows_on = (device, moved)
    return moved


def host_to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t.to(device)`` without a stream synchronization on CUDA.

    A blocking host-to-device copy waits for every kernel queued before it (the forward);
    a non-blocking one from pageable memory is staged by the driver when called (measured on
    H100: returns in ~25 us while the GPU is busy), so ``t`` may be freed or reused at once.
    """
    return t.to(device, non_blocking=torch.device(device).type == "cuda")


def _ints(xs: list[int]) -> np.ndarray:
    """int64 array of a list of ints (through ``array('q')``: ~2x faster than ``np.array``)."""
    return np.frombuffer(array("q", xs), dtype=np.int64)


def _t(a: np.ndarray) -> torch.Tensor:
    """The torch view of a numpy result (no copy)."""
    return torch.from_numpy(a)


def row_runs(plan: Any) -> list[tuple[int, int, int]]:
    """The plan's query positions as runs ``(lo, hi, span index)`` of consecutive positions.

    A position belongs to the first span whose end lies above it, and is dropped if it lies
    below that span's start (a gap between spans); this is the rule of a per-position walk
    over ``plan.query_positions()``, computed per span for the usual ``range``.
    """
    spans = plan.spans
    q = plan.query_positions()
    runs: list[tuple[int, int, int]] = []
    if isinstance(q, range) and q.step == 1:
        prev_hi = q.start
        for i, (lo, hi) in enumerate(spans):
            a, b = max(prev_hi, lo), min(q.stop, hi)
            if a < b:
                runs.append((a, b, i))
            prev_hi = max(prev_hi, hi)
        return runs
    span_index = 0  # any other iterable of ascending positions: walk it
    for p in q:
        while p >= spans[span_index][1]:
            span_index += 1
        if p < spans[span_index][0]:
            continue
        if runs and runs[-1][2] == span_index and runs[-1][1] == p:
            runs[-1] = (runs[-1][0], p + 1, span_index)
        else:
            runs.append((p, p + 1, span_index))
    return runs


@functools.lru_cache(maxsize=None)
def _key_bounds_of(cls: type) -> Any:
    """``cls.key_bounds`` if the class that defines it also defines the ``key_hi`` (and any
    ``key_lo``) it vectorizes; else the per-token walk (e.g. a subclass overriding ``key_hi``)."""

    def owner(name: str) -> Any:
        return next((c for c in cls.__mro__ if name in vars(c)), None)

    fn = owner("key_bounds")
    if fn is not None and owner("key_hi") is fn and owner("key_lo") in (None, fn):
        return cls.key_bounds
    return _key_bounds_per_token


def _key_bounds_per_token(reqs: list[Any], positions: np.ndarray,
                          counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Request classes without ``key_bounds``: their per-position ``key_hi`` / ``key_lo`` methods."""
    pairs = list(zip(np.repeat(np.arange(len(reqs)), counts).tolist(), positions.tolist()))
    key_hi = np.array([reqs[r].key_hi(p) for r, p in pairs], dtype=np.int64)
    if hasattr(reqs[0], "key_lo"):
        return np.array([reqs[r].key_lo(p) for r, p in pairs], dtype=np.int64), key_hi
    return np.zeros_like(positions), key_hi


def pack_batch(reqs: list[Any], plans: list[Any], page_size: int, kv_cache_manager: Any) -> StepBatch:
    """Build the batch for ``reqs`` (each with its ``plan``); page tables must cover write_end.

    One pass over the requests gathers host scalars (one row per request, one per run of
    logits rows, one per block); every per-token and per-row array is expanded from them.
    """
    max_pages = max(1, max(len(req.page_table) for req in reqs))
    # Python lists (list.extend of a slice is ~10x cheaper than array.extend), converted once.
    window: list[int] = []  # [W] each request's canvas window [w_lo, w_hi); position -1 reads as -1
    table: list[int] = []  # [R * max_pages] page tables, -1 padding
    per_req: list[int] = []  # [R, 8] see the unpacking below
    per_run: list[int] = []  # [S, 7] see the unpacking below
    blk_forced, blk_quota, blk_req, blk_id, blk_all, blk_min = [], [], [], [], [], []
    bases = []  # first token of each request in the flat batch
    num_tokens = num_rows = 0
    for r, (req, plan) in enumerate(zip(reqs, plans)):
        start, end, canvas = plan.start, plan.end, req.canvas
        runs = row_runs(plan)
        # Canvas window: the fed tokens, each row's token and the token before it.
        w_lo, w_hi = (min(start, runs[0][0] - 1), max(end, runs[-1][1])) if runs else (start, end)
        off = len(window) - w_lo  # window index of position p = p + off
        if w_lo < 0:
            window.append(-1)
        window += canvas[max(w_lo, 0):w_hi]
        if len(window) != off + w_hi:
            raise IndexError(f"request {req.req_id}: the step reads canvas positions up to {w_hi} but the "
                             f"canvas has {len(canvas)}")
        lo, hi = max(plan.write_start, start), plan.write_end
        pages = req.page_table
        if hi > lo and (lo < 0 or hi > len(pages) * kv_cache_manager.page_size):
            raise IndexError(f"positions [{lo}, {hi}) are outside the {len(pages)} pages of this table")
        table += pages
        if len(pages) < max_pages:
            table += [-1] * (max_pages - len(pages))
        per_req += (end - start, start - num_tokens, off, lo, hi, r * max_pages,
                    getattr(plan, "cached_keys", start), bool(getattr(plan, "cache_only", False)))
        first_block, k = len(blk_req), len(plan.spans)
        blk_forced += plan.forced
        blk_quota += plan.quota or [-1] * k
        blk_req += [r] * k
        blk_id += plan.blocks or range(k)
        blk_all += plan.force_all or [False] * k
        blk_min += getattr(plan, "min_fill", None) or [1] * k
        logit_off = num_tokens - int(plan.shift) - start  # logits row of position p = p + logit_off
        for a, b, span_index in runs:
            per_run += (b - a, r, a - num_rows, first_block + span_index, logit_off, off, req.num_prompt_tokens)
            num_rows += b - a
        bases.append(num_tokens)
        num_tokens += end - start
    win = _ints(window)  # [W]
    req_cols = _ints(per_req).reshape(len(reqs), 8).T  # [8, R]
    counts = req_cols[0]  # [R] tokens of each request
    tok = np.repeat(req_cols[1:6], counts, axis=1)  # [5, N]: position offset, window offset, write lo/hi, table row
    positions = np.arange(num_tokens) + tok[0]  # [N]
    written = (positions >= tok[2]) & (positions < tok[3])  # [N]
    page_table = _ints(table).reshape(len(reqs), max_pages)  # [R, P]
    slot_mapping = kv_cache_manager.slot_mapping(page_table.reshape(-1), tok[4], positions, written)  # [N]
    key_lo, key_hi = _key_bounds_of(type(reqs[0]))(reqs, positions, counts)  # [N], [N]
    run_cols = _ints(per_run).reshape(len(per_run) // 7, 7).T  # [7, S]
    # [6, M]: request, position offset, block, logits offset, window offset, prompt length
    row = np.repeat(run_cols[1:], run_cols[0], axis=1)
    row_position = np.arange(num_rows) + row[1]  # [M]
    at = row_position + row[4]  # [M] window index of the row's position
    blocks = _ints(blk_forced + blk_quota + blk_req + blk_id + blk_all + blk_min).reshape(6, len(blk_req))  # [6, NB]
    cu = np.empty(len(reqs) + 1, dtype=np.int64)
    cu[0], cu[1:] = 0, np.cumsum(counts)
    meta = AttentionMetadata(
        cu_seqlens_q=_t(cu), positions=_t(positions), context_lens=_t(req_cols[6].copy()),
        page_table=_t(page_table), slot_mapping=_t(slot_mapping), key_lo=_t(key_lo), key_hi=_t(key_hi),
        cache_only=_t(req_cols[7] != 0), logits_indices=_t(row_position + row[3]), page_size=page_size)
    pack_extras = getattr(type(reqs[0]), "pack_extras", None)
    extras = pack_extras(reqs, plans, bases) if pack_extras else {}
    return StepBatch(_t(win[positions + tok[1]]), _t(positions.copy()), meta, _t(row[0]), _t(row_position),
                     _t(win[at]), _t(row[2]), _t(blocks[0] != 0), _t(blocks[1]), _t(blocks[2]), _t(blocks[3]),
                     _t(blocks[4] != 0), _t(blocks[5]), _t(row[5]), _t(win[at - 1]), extras,
                     multi_fill=max(blk_min, default=1) > 1)
