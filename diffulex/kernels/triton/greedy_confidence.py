"""Greedy token choice and its confidence in one pass over the vocabulary.

Per row of ``logits [M, V]``: ``token = argmax`` over the allowed vocabulary
(``forbidden[v]`` excluded; ties -> lowest id; if every id is forbidden, 0, as torch's
argmax of an all ``-inf`` row), and ``conf = softmax(logits)[token]`` under the full,
unmasked fp32 softmax. Same function as ``kernels.reference.greedy_confidence`` (the greedy
path of ``sampling.select.select_tokens`` with PROBABILITY confidence).

Each program streams one slice of a row's vocabulary once in ``BLOCK_V`` chunks, each lane keeping
an online max / rescaled exp-sum and its own best allowed (value, id); lanes merge at the end.
No probabilities are materialized. When the rows alone would leave most SMs idle (a batch-1
step: 32 rows), each row is cut into ``S`` slices (grid ``rows x S``); every slice writes its
``(max, exp-sum, best value, best id)`` and a second launch merges the ``S`` partials of each row
in slice order (deterministic; ties still go to the lowest id). Limits: NaN logits are not handled.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from diffulex.kernels.triton._runtime import next_pow2, sm_count

MAX_SPLITS = 32  # vocabulary slices per row (a power of two)


@triton.jit
def _greedy_confidence_kernel(logits_ptr, forbidden_ptr, tokens_ptr, conf_ptr, part_ptr, part_id_ptr,
                              stride_lm, V, slice_len, BLOCK_V: tl.constexpr, SPLITS: tl.constexpr):
    row = tl.program_id(0)
    z = tl.program_id(1)
    base = logits_ptr + row.to(tl.int64) * stride_lm
    lane = tl.arange(0, BLOCK_V)
    m = tl.full([BLOCK_V], float("-inf"), tl.float32)  # per-lane running max
    s = tl.zeros([BLOCK_V], tl.float32)  # per-lane sum of exp(x - m)
    best = tl.full([BLOCK_V], float("-inf"), tl.float32)  # per-lane best allowed logit
    best_id = tl.zeros([BLOCK_V], tl.int32)
    lo = z * slice_len
    hi = tl.minimum(lo + slice_len, V)
    for v0 in range(lo, hi, BLOCK_V):
        offs = v0 + lane
        ok = offs < hi
        x = tl.load(base + offs, mask=ok, other=float("-inf")).to(tl.float32)
        banned = tl.load(forbidden_ptr + offs, mask=ok, other=1) != 0
        m_new = tl.maximum(m, x)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - m_safe) + tl.exp(x - m_safe)
        m = m_new
        better = (x > best) & ~banned  # strict: a lane keeps its earliest (lowest) id on ties
        best_id = tl.where(better, offs, best_id)
        best = tl.where(better, x, best)
    m_all = tl.max(m, 0)
    m_all_safe = tl.where(m_all == float("-inf"), 0.0, m_all)
    total = tl.sum(s * tl.exp(m - m_all_safe), 0)
    top = tl.max(best, 0)
    token = tl.min(tl.where(best == top, best_id, V), 0)
    if SPLITS == 1:
        chosen = tl.load(base + token).to(tl.float32)
        tl.store(tokens_ptr + row, token.to(tl.int64))
        tl.store(conf_ptr + row, tl.exp(chosen - m_all_safe) / total)
    else:  # this slice's partial: (max, exp-sum relative to it, best allowed value), best id
        out = part_ptr + (row * SPLITS + z) * 3
        tl.store(out, m_all)
        tl.store(out + 1, total)
        tl.store(out + 2, top)
        tl.store(part_id_ptr + row * SPLITS + z, token)


@triton.jit
def _greedy_merge_kernel(logits_ptr, tokens_ptr, conf_ptr, part_ptr, part_id_ptr, stride_lm, V,
                         SPLITS: tl.constexpr):
    row = tl.program_id(0)
    z = tl.arange(0, SPLITS)
    p = part_ptr + (row * SPLITS + z) * 3
    m = tl.load(p)  # [S]
    s = tl.load(p + 1)
    best = tl.load(p + 2)
    best_id = tl.load(part_id_ptr + row * SPLITS + z)
    m_all = tl.max(m, 0)
    m_all_safe = tl.where(m_all == float("-inf"), 0.0, m_all)
    total = tl.sum(s * tl.exp(m - m_all_safe), 0)  # slices with no finite logit add 0
    top = tl.max(best, 0)
    token = tl.min(tl.where(best == top, best_id, V), 0)  # lowest id among the slices' winners
    chosen = tl.load(logits_ptr + row.to(tl.int64) * stride_lm + token).to(tl.float32)
    tl.store(tokens_ptr + row, token.to(tl.int64))
    tl.store(conf_ptr + row, tl.exp(chosen - m_all_safe) / total)


def vocab_splits(n_rows: int, vocab: int, block_v: int, device: torch.device) -> int:
    """Slices per row: about 8 programs per SM over all rows, each slice at least 4 chunks of
    ``block_v``; 1 (no merge launch) once the rows alone give that. H100, vocab 157,184, fp32,
    graph-timed: 32 rows 35.2 -> 10.8 us (16 slices), 1 row 33.4 -> 6.0 us, 128 rows 56.0 -> 37.9 us
    (8), 512 rows 156.3 -> 129.1 us (2)."""
    want = min(MAX_SPLITS, -(-8 * sm_count(device) // max(n_rows, 1)), max(1, vocab // (4 * block_v)))
    return 1 << (want.bit_length() - 1) if want > 1 else 1


def greedy_confidence(logits: torch.Tensor, forbidden: torch.Tensor,
                      splits: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits: [M, V]`` (any float dtype), ``forbidden: [V]`` bool -> ``(tokens [M] long, conf [M] fp32)``.

    ``splits``: vocabulary slices per row (a power of two <= ``MAX_SPLITS``; default :func:`vocab_splits`)."""
    n_rows, vocab = logits.shape
    if logits.stride(1) != 1:
        raise ValueError("greedy_confidence: logits rows must be contiguous")
    if forbidden.shape != (vocab,):
        raise ValueError(f"greedy_confidence: forbidden has shape {tuple(forbidden.shape)}, expected ({vocab},)")
    tokens = torch.empty(n_rows, dtype=torch.long, device=logits.device)
    conf = torch.empty(n_rows, dtype=torch.float32, device=logits.device)
    if n_rows == 0:
        return tokens, conf
    block_v = min(2048, next_pow2(vocab))
    splits = splits or vocab_splits(n_rows, vocab, block_v, logits.device)
    if splits & (splits - 1) or not 1 <= splits <= MAX_SPLITS:
        raise ValueError(f"greedy_confidence: splits={splits}, expected a power of two <= {MAX_SPLITS}")
    slice_len = triton.cdiv(triton.cdiv(vocab, splits), block_v) * block_v  # whole chunks per slice
    part = torch.empty(n_rows * splits * 3 if splits > 1 else 1, dtype=torch.float32, device=logits.device)
    part_id = torch.empty(n_rows * splits if splits > 1 else 1, dtype=torch.int32, device=logits.device)
    _greedy_confidence_kernel[(n_rows, splits)](
        logits, forbidden.contiguous().view(torch.uint8), tokens, conf, part, part_id, logits.stride(0), vocab,
        slice_len, BLOCK_V=block_v, SPLITS=splits, num_warps=8 if block_v >= 1024 else 4,
    )
    if splits > 1:
        _greedy_merge_kernel[(n_rows,)](logits, tokens, conf, part, part_id, logits.stride(0), vocab,
                                        SPLITS=splits, num_warps=1)
    return tokens, conf
