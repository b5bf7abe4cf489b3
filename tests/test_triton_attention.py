"""Triton store_kvcache and paged attention equal their PyTorch references (CPU interpreter).

Pins: every AttentionMetadata mode (block-causal, prefix-full, cache_only, sliding window,
softcap, empty sequences, no cache at all), GQA groups of 1..4 incl. a non-power-of-two
group, head dims 8..256 with padding, odd page sizes and lengths, strided K/V writes.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from triton_interp import interpreted, triton_interpreter  # noqa: F401  (autouse fixture)

with interpreted():  # triton and the kernels read the setting at import: keep it on then
    pytest.importorskip("triton")
    from diffulex.kernels import reference as ref
    from diffulex.kernels.triton.paged_attention import paged_attention
    from diffulex.kernels.triton.store_kvcache import store_kvcache
    from diffulex.layers.attention_metadata import AttentionMetadata
    from test_paged_attention import CASES, build


def random_batch(gen, seqs, hq, hkv, d, page, dtype=torch.float32):
    """A paged batch; ``seqs``: (ctx, n_new, mode) with mode in block/prefix/cache_only/sliding/causal."""
    max_pages = max(-(-max(ctx, ctx + n) // page) for ctx, n, _ in seqs) + 1
    num_pages = max_pages * len(seqs) + 2
    perm = torch.randperm(num_pages, generator=gen)
    k_cache = torch.randn(num_pages, page, hkv, d, generator=gen).to(dtype)
    v_cache = torch.randn(num_pages, page, hkv, d, generator=gen).to(dtype)
    page_table = torch.full((len(seqs), max_pages), -1, dtype=torch.long)
    pos, slots, lo, hi = [], [], [], []
    for s, (ctx, n, mode) in enumerate(seqs):
        page_table[s] = perm[s * max_pages:(s + 1) * max_pages]
        start = max(ctx - n, 0) if mode == "cache_only" else ctx
        p = torch.arange(start, start + n)
        end = ctx if mode == "cache_only" else ctx + n
        pos.append(p)
        slots.append(page_table[s][p // page] * page + p % page)
        if mode == "sliding":
            lo.append(torch.clamp(p - 5, min=0)), hi.append(p + 1)
        elif mode == "causal":
            lo.append(torch.zeros_like(p)), hi.append(p + 1)
        elif mode == "prefix":
            lo.append(torch.zeros_like(p)), hi.append(torch.clamp((p // 4 + 1) * 4, min=ctx + 3, max=end))
        else:  # block-causal (also used by cache_only)
            lo.append(torch.zeros_like(p)), hi.append(torch.clamp((p // 4 + 1) * 4, max=end))
    lens = torch.tensor([n for _, n, _ in seqs])
    n_tok = int(lens.sum())
    meta = AttentionMetadata(
        cu_seqlens_q=torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)]), positions=torch.cat(pos),
        context_lens=torch.tensor([ctx for ctx, _, _ in seqs]), page_table=page_table,
        slot_mapping=torch.cat(slots), key_lo=torch.cat(lo), key_hi=torch.cat(hi),
        cache_only=torch.tensor([m == "cache_only" for _, _, m in seqs]),
        logits_indices=torch.arange(n_tok), page_size=page)
    meta.validate()
    q = torch.randn(n_tok, hq, d, generator=gen).to(dtype)
    k = torch.randn(n_tok, hkv, d, generator=gen).to(dtype)
    v = torch.randn(n_tok, hkv, d, generator=gen).to(dtype)
    return q, k, v, k_cache, v_cache, meta


@pytest.mark.parametrize("mode", sorted(CASES))
@pytest.mark.parametrize("softcap", [None, 2.0])
def test_matches_reference_in_every_mode(mode, softcap):
    gen = torch.Generator().manual_seed(11)
    q, k_new, v_new, k_cache, v_cache, meta, _ = build(CASES[mode], gen)
    ref.store_kvcache(k_new, v_new, k_cache, v_cache, meta.slot_mapping)
    expected = ref.paged_attention(q, k_new, v_new, k_cache, v_cache, meta, scale=0.7, softcap=softcap)
    # one token per tile, tiles that straddle block-causal blocks; unsplit and split key axis; a
    # 16-key tile (the launch overrides of experiments/attention_tune.py)
    for block_q, splits, launch in ((None, None, {}), (1, 0, {}), (3, 0, {}), (3, 3, {}),
                                    (3, 3, dict(block_n=16, num_warps=2, num_stages=3)), (None, 0, dict(block_n=16))):
        out = paged_attention(q, k_new, v_new, k_cache, v_cache, meta, scale=0.7, softcap=softcap,
                              block_q=block_q, splits=splits, **launch)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("splits, tiles", [(None, None), (2, 1), (3, 2), (7, 1), (16, 1), (16, 2)])
def test_split_key_axis_over_long_contexts(splits, tiles):
    """Cached keys over many tiles, shared among splits per sequence (incl. shares that are
    empty, unused splits (fewer shares than splits), blocks too short to split, a sliding window that starts mid-cache, cache-only and
    cache-free sequences). Two calls on one per-forward memo: the first leaves the merge
    counters at zero for the second (the next layer)."""
    gen = torch.Generator().manual_seed(5)
    seqs = [(300, 6, "block"), (170, 3, "sliding"), (0, 5, "causal"), (230, 4, "cache_only"), (65, 2, "prefix")]
    q, k, v, k_cache, v_cache, meta = random_batch(gen, seqs, 4, 2, 16, 8)
    ref.store_kvcache(k, v, k_cache, v_cache, meta.slot_mapping)
    expected = ref.paged_attention(q, k, v, k_cache, v_cache, meta, scale=0.5, softcap=None)
    fwd = meta.for_forward()
    for _ in range(2):
        out = paged_attention(q, k, v, k_cache, v_cache, fwd, scale=0.5, splits=splits, tiles_per_split=tiles)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    counters = [v for key, v in fwd.memo.items() if key[0] == "paged_attention.counters"]
    assert len(counters) == 1 and int(counters[0].abs().sum()) == 0


SHAPES = [  # (Hq, Hkv, D, page)
    (4, 4, 16, 5),  # MHA, one head per group
    (8, 2, 24, 4),  # group 4, padded head dim
    (6, 2, 40, 3),  # group 3 (padded to 4), odd page
    (4, 1, 128, 8),  # MQA-like group, LLaDA2 head dim
    (2, 1, 256, 16),  # largest head dim
]


@pytest.mark.parametrize("hq,hkv,d,page", SHAPES)
def test_heads_and_head_dims(hq, hkv, d, page):
    gen = torch.Generator().manual_seed(hq * 1000 + d)
    seqs = [(13, 7, "block"), (0, 5, "causal"), (9, 0, "block"), (11, 6, "cache_only"), (7, 9, "sliding"),
            (5, 6, "prefix")]
    q, k, v, k_cache, v_cache, meta = random_batch(gen, seqs, hq, hkv, d, page)
    ref.store_kvcache(k, v, k_cache, v_cache, meta.slot_mapping)
    expected = ref.paged_attention(q, k, v, k_cache, v_cache, meta, scale=d ** -0.5, softcap=None)
    out = paged_attention(q, k, v, k_cache, v_cache, meta, scale=d ** -0.5)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_bf16_close_to_reference():
    gen = torch.Generator().manual_seed(5)
    seqs = [(37, 8, "block"), (20, 8, "cache_only"), (0, 11, "prefix")]
    q, k, v, k_cache, v_cache, meta = random_batch(gen, seqs, 8, 2, 64, 8, dtype=torch.bfloat16)
    ref.store_kvcache(k, v, k_cache, v_cache, meta.slot_mapping)
    expected = ref.paged_attention(q, k, v, k_cache, v_cache, meta, scale=0.125)
    out = paged_attention(q, k, v, k_cache, v_cache, meta, scale=0.125)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected.float(), atol=2e-2, rtol=2e-2)


def test_without_cache_dense_block_causal():
    gen = torch.Generator().manual_seed(2)
    meta = AttentionMetadata.for_dense([9, 1, 17], block_size=4)
    q, k, v = (torch.randn(27, h, 16, generator=gen) for h in (4, 2, 2))
    expected = ref.paged_attention(q, k, v, None, None, meta, scale=0.3, softcap=5.0)
    out = paged_attention(q, k, v, None, None, meta, scale=0.3, softcap=5.0)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_store_kvcache_matches_reference_and_skips_negative_slots(dtype):
    gen = torch.Generator().manual_seed(4)
    qkv = torch.randn(7, 3 * 2 * 24, generator=gen).to(dtype)  # strided views, as sliced from a fused projection
    k = qkv[:, 48:96].view(7, 2, 24)
    v = qkv[:, 96:].view(7, 2, 24)
    slots = torch.tensor([3, -1, 10, 0, -1, 14, 7])
    expected_k, expected_v = torch.randn(2, 3, 5, 2, 24, generator=gen).to(dtype)
    out_k, out_v = expected_k.clone(), expected_v.clone()
    ref.store_kvcache(k, v, expected_k, expected_v, slots)
    store_kvcache(k, v, out_k, out_v, slots)
    assert torch.equal(out_k, expected_k) and torch.equal(out_v, expected_v)


def test_no_split_axis_when_the_page_table_is_short():
    """The split decision from shapes: a page table too short for a context that could split
    (CUDA graphs give short steps such a table) launches without the split axis."""
    gen = torch.Generator().manual_seed(3)
    q, k, v, k_cache, v_cache, meta = random_batch(gen, [(150, 6, "block")], 4, 2, 16, 8)
    ref.store_kvcache(k, v, k_cache, v_cache, meta.slot_mapping)
    expected = ref.paged_attention(q, k, v, k_cache, v_cache, meta, scale=0.5, softcap=None)
    for pages, splits in ((meta.page_table.shape[1], False), (40, True)):  # 21 x 8 keys <= 256: no split axis
        table = torch.full((1, pages), -1, dtype=torch.long)
        table[:, :meta.page_table.shape[1]] = meta.page_table
        fwd = dataclasses.replace(meta, page_table=table).for_forward()
        out = paged_attention(q, k, v, k_cache, v_cache, fwd, scale=0.5)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        assert any(key[0] == "paged_attention.counters" for key in fwd.memo) == splits
