"""The reference paged attention equals dense masked attention in every visibility mode."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from diffulex.kernels import REFERENCE_OPS, get_ops
from diffulex.kernels.reference import paged_attention, store_kvcache
from diffulex.layers.attention_metadata import AttentionMetadata

HQ, HKV, D, PAGE = 6, 2, 8, 4


@dataclass
class SeqCase:
    """One sequence: ``ctx`` cached positions, ``n_new`` queries starting at ``start``."""

    ctx: int
    n_new: int
    start: int
    cache_only: bool
    lo: callable  # position tensor -> key_lo
    hi: callable  # position tensor -> key_hi


def block_hi(b, end=None):
    return lambda p: (p // b + 1) * b if end is None else torch.clamp((p // b + 1) * b, max=end)


ZERO_LO = lambda p: torch.zeros_like(p)  # noqa: E731

CASES = {
    "block_causal_no_cache": [SeqCase(0, 11, 0, False, ZERO_LO, block_hi(4, 11))],
    "block_causal_cached": [SeqCase(8, 5, 8, False, ZERO_LO, block_hi(4)),
                            SeqCase(13, 3, 13, False, ZERO_LO, block_hi(4))],
    "prefix_full": [SeqCase(0, 9, 0, False, ZERO_LO, lambda p: torch.clamp((p // 4 + 1) * 4, min=6)),
                    SeqCase(5, 7, 5, False, ZERO_LO, lambda p: torch.full_like(p, 9))],
    "cache_only": [SeqCase(13, 5, 8, True, ZERO_LO, block_hi(4, 13)),
                   SeqCase(7, 7, 0, True, ZERO_LO, lambda p: torch.full_like(p, 7))],
    "sliding": [SeqCase(6, 7, 6, False, lambda p: torch.clamp(p - 3, min=0), lambda p: p + 1),
                SeqCase(0, 5, 0, False, lambda p: torch.clamp(p - 2, min=0), lambda p: p + 1)],
    "mixed": [SeqCase(9, 3, 9, False, ZERO_LO, block_hi(4)),
              SeqCase(13, 5, 8, True, ZERO_LO, block_hi(4, 13)),
              SeqCase(0, 7, 0, False, lambda p: torch.clamp(p - 3, min=0), block_hi(2, 7))],
}


def build(cases: list[SeqCase], gen: torch.Generator):
    """Random true K/V per sequence, a shuffled paged cache holding [0, ctx) (stale where rewritten)."""
    max_pages = max(-(-max(c.ctx, c.start + c.n_new) // PAGE) for c in cases)
    num_pages = max_pages * len(cases) + 3
    perm = torch.randperm(num_pages, generator=gen)
    k_cache = torch.randn(num_pages, PAGE, HKV, D, generator=gen)
    v_cache = torch.randn(num_pages, PAGE, HKV, D, generator=gen)
    page_table = torch.full((len(cases), max_pages), -1, dtype=torch.long)
    q, k_new, v_new, pos, slots, lo, hi, truth = [], [], [], [], [], [], [], []
    for s, c in enumerate(cases):
        total = max(c.ctx, c.start + c.n_new)
        pages = perm[s * max_pages: s * max_pages + -(-total // PAGE)]
        page_table[s, : len(pages)] = pages
        kt, vt = torch.randn(total, HKV, D, generator=gen), torch.randn(total, HKV, D, generator=gen)
        p = torch.arange(c.start, c.start + c.n_new)
        slot = pages[p // PAGE] * PAGE + p % PAGE
        old = torch.arange(c.ctx)
        old_slot = pages[old // PAGE] * PAGE + old % PAGE
        k_cache.view(-1, HKV, D)[old_slot] = kt[: c.ctx]
        v_cache.view(-1, HKV, D)[old_slot] = vt[: c.ctx]
        if c.cache_only:  # the cache holds stale values where the new tokens are written
            k_cache.view(-1, HKV, D)[slot] = torch.randn(c.n_new, HKV, D, generator=gen)
        # Non-cache-only sequences write their new K/V beyond the context (a commit step).
        slots.append(slot)
        q.append(torch.randn(c.n_new, HQ, D, generator=gen))
        k_new.append(kt[p]), v_new.append(vt[p]), pos.append(p)
        lo.append(c.lo(p)), hi.append(c.hi(p))
        key_pos = torch.arange(c.ctx) if c.cache_only else torch.cat([torch.arange(c.ctx), p])
        truth.append((kt[key_pos], vt[key_pos], key_pos))
    lens = torch.tensor([c.n_new for c in cases])
    cu = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)])
    meta = AttentionMetadata(
        cu_seqlens_q=cu, positions=torch.cat(pos),
        context_lens=torch.tensor([c.ctx for c in cases]), page_table=page_table,
        slot_mapping=torch.cat(slots), key_lo=torch.cat(lo), key_hi=torch.cat(hi),
        cache_only=torch.tensor([c.cache_only for c in cases]),
        logits_indices=torch.arange(int(cu[-1])), page_size=PAGE)
    meta.validate()
    return torch.cat(q), torch.cat(k_new), torch.cat(v_new), k_cache, v_cache, meta, truth


def dense_reference(q, meta, truth, scale, softcap=None):
    """Per sequence: full K/V, explicit boolean [q, k] mask from key_lo / key_hi."""
    outs = []
    for s, (k, v, key_pos) in enumerate(truth):
        a, b = int(meta.cu_seqlens_q[s]), int(meta.cu_seqlens_q[s + 1])
        k = k.repeat_interleave(HQ // HKV, dim=1)  # [K, Hq, D]
        v = v.repeat_interleave(HQ // HKV, dim=1)
        mask = torch.zeros(b - a, len(key_pos), dtype=torch.bool)
        for i in range(b - a):
            for j, p in enumerate(key_pos.tolist()):
                mask[i, j] = meta.key_lo[a + i] <= p < meta.key_hi[a + i]
        scores = torch.einsum("qhd,khd->hqk", q[a:b], k) * scale
        if softcap is not None:
            scores = softcap * torch.tanh(scores / softcap)
        probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        outs.append(torch.einsum("hqk,khd->qhd", probs, v))
    return torch.cat(outs)


@pytest.mark.parametrize("mode", sorted(CASES))
@pytest.mark.parametrize("softcap", [None, 2.0])
def test_paged_attention_matches_dense_masked(mode, softcap):
    gen = torch.Generator().manual_seed(sorted(CASES).index(mode))
    q, k_new, v_new, k_cache, v_cache, meta, truth = build(CASES[mode], gen)
    store_kvcache(k_new, v_new, k_cache, v_cache, meta.slot_mapping)  # writes happen before attention
    out = paged_attention(q, k_new, v_new, k_cache, v_cache, meta, scale=0.7, softcap=softcap)
    torch.testing.assert_close(out, dense_reference(q, meta, truth, 0.7, softcap), atol=1e-5, rtol=1e-5)


def test_store_kvcache_skips_negative_slots():
    k_cache, v_cache = torch.zeros(3, PAGE, HKV, D), torch.zeros(3, PAGE, HKV, D)
    k, v = torch.randn(3, HKV, D), torch.randn(3, HKV, D)
    store_kvcache(k, v, k_cache, v_cache, torch.tensor([5, -1, 8]))
    flat = k_cache.view(-1, HKV, D)
    torch.testing.assert_close(flat[5], k[0])
    torch.testing.assert_close(flat[8], k[2])
    assert int((flat.abs().sum((1, 2)) > 0).sum()) == 2


def test_bf16_inputs_give_bf16_output_close_to_fp32():
    gen = torch.Generator().manual_seed(3)
    q, k_new, v_new, k_cache, v_cache, meta, _ = build(CASES["mixed"], gen)
    store_kvcache(k_new, v_new, k_cache, v_cache, meta.slot_mapping)
    ref = paged_attention(q, k_new, v_new, k_cache, v_cache, meta, scale=0.5)
    out = paged_attention(q.bfloat16(), k_new.bfloat16(), v_new.bfloat16(), k_cache.bfloat16(),
                          v_cache.bfloat16(), meta, scale=0.5)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)


def test_dense_metadata_and_validation():
    meta = AttentionMetadata.for_dense([5, 3], block_size=2)
    meta.validate()
    assert meta.key_hi.tolist() == [2, 2, 4, 4, 5, 2, 2, 3]
    meta.cache_only = torch.tensor([True, False])
    with pytest.raises(ValueError, match="cache_only"):
        meta.validate()
    bad = AttentionMetadata.for_dense([4])
    bad.key_lo = torch.full((4,), 9)
    with pytest.raises(ValueError, match="key_lo"):
        bad.validate()


def test_kernel_selection_is_one_place():
    assert get_ops("cpu") is REFERENCE_OPS
    assert REFERENCE_OPS.paged_attention is paged_attention
