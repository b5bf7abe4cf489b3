"""Greedy token choice and its confidence in one pass over the vocabulary.

Per row of ``logits [M, V]``: ``token = argmax`` over the allowed vocabulary
(``forbidden[v]`` excluded; ties -> lowest id; if every id is forbidden, 0, as torch's
argmax of an all ``-inf`` row), and ``conf = softmax(logits)[token]`` under the full,
unmasked fp32 softmax. Same function as ``kernels.reference.greedy_confidence`` (the greedy
path of ``sampling.select.select_tokens`` with PROBABILITY confidence).

One program per row streams the row once in ``BLOCK_V`` chunks, each lane keeping an online
max / rescaled exp-sum and its own best allowed (value, id); lanes merge at the end. No
probabilities are materialized. Limits: NaN logits are not handled; one program per row, so
very few rows use few SMs (a split-vocab second stage would help batch-1 steps).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from diffulex.kernels.triton._runtime import next_pow2


@triton.jit
def _greedy_confidence_kernel(logits_ptr, forbidden_ptr, tokens_ptr, conf_ptr, stride_lm, V,
                              BLOCK_V: tl.constexpr):
    row = tl.program_id(0)
    base = logits_ptr + row.to(tl.int64) * stride_lm
    lane = tl.arange(0, BLOCK_V)
    m = tl.full([BLOCK_V], float("-inf"), tl.float32)  # per-lane running max
    s = tl.zeros([BLOCK_V], tl.float32)  # per-lane sum of exp(x - m)
    best = tl.full([BLOCK_V], float("-inf"), tl.float32)  # per-lane best allowed logit
    best_id = tl.zeros([BLOCK_V], tl.int32)
    for v0 in range(0, V, BLOCK_V):
        offs = v0 + lane
        ok = offs < V
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
    chosen = tl.load(base + token).to(tl.float32)
    tl.store(tokens_ptr + row, token.to(tl.int64))
    tl.store(conf_ptr + row, tl.exp(chosen - m_all_safe) / total)


def greedy_confidence(logits: torch.Tensor, forbidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits: [M, V]`` (any float dtype), ``forbidden: [V]`` bool -> ``(tokens [M] long, conf [M] fp32)``."""
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
    _greedy_confidence_kernel[(n_rows,)](
        logits, forbidden.contiguous().view(torch.uint8), tokens, conf, logits.stride(0), vocab,
        BLOCK_V=block_v, num_warps=8 if block_v >= 1024 else 4,
    )
    return tokens, conf
