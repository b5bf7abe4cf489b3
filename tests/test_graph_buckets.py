"""Padded batch-size buckets of the decode-step CUDA graphs (``diffulex.layers.graph_buckets``).

Unit checks of the bucket rules and of the padded metadata (valid, pad tokens in a sequence of
their own, never written to the cache), the reference attention on padded metadata (real rows
unchanged), and end to end with the fake capture of ``fake_cuda_graphs``: an engine whose step
shapes vary (3 prompts of different lengths finishing at different times) replays only bucket
shapes, some of them padded, and gives the eager engine's greedy tokens.
"""

from __future__ import annotations

import pytest
import torch

import fake_cuda_graphs
import diffulex.kernels.reference as reference_ops
from diffulex.layers.attention_metadata import AttentionMetadata
from diffulex.layers.graph_buckets import Bucket, GraphBuckets
from triton_interp import interpreted, triton_interpreter  # noqa: F401  (autouse fixture)

with interpreted():
    pytest.importorskip("triton")
    import diffulex.kernels.triton as triton_ops  # decorate the kernels while interpreting
    from diffulex import Diffulex, SamplingParams
    from diffulex.layers.graphs import DecodeGraphs

PAGE = 4


def _meta(counts: list[int], contexts: list[int], cache_only: list[bool] | None = None,
          max_pages: int = 6) -> AttentionMetadata:
    """A decode-like step: sequence i has ``contexts[i]`` cached keys and ``counts[i]`` new tokens
    right after them (block-causal in blocks of 8), its pages ``i * max_pages + j``."""
    s = len(counts)
    cu = torch.zeros(s + 1, dtype=torch.long)
    cu[1:] = torch.tensor(counts).cumsum(0)
    pos = torch.cat([torch.arange(c, c + q) for c, q in zip(contexts, counts)]).long()
    end = torch.cat([torch.full((q,), c + q) for c, q in zip(contexts, counts)]).long()
    pages = torch.full((s, max_pages), -1, dtype=torch.long)
    for i, (c, q) in enumerate(zip(contexts, counts)):
        used = -(-(c + q) // PAGE)
        pages[i, :used] = torch.arange(used) + i * max_pages
    seq_of = torch.repeat_interleave(torch.arange(s), torch.tensor(counts))
    slot = pages[seq_of, pos // PAGE] * PAGE + pos % PAGE
    n = int(cu[-1])
    return AttentionMetadata(
        cu_seqlens_q=cu, positions=pos, context_lens=torch.tensor(contexts, dtype=torch.long), page_table=pages,
        slot_mapping=slot, key_lo=torch.zeros(n, dtype=torch.long),
        key_hi=torch.minimum((pos // 8 + 1) * 8, end),
        cache_only=torch.tensor(cache_only or [False] * s), logits_indices=torch.arange(0, n, 2), page_size=PAGE)


def _buckets(**kw) -> GraphBuckets:
    args = dict(batch_sizes=[1, 2, 4, 8], granularity=8, max_seq_tokens=16, max_tokens=128)
    return GraphBuckets(**{**args, **kw})


# -- (a) the bucket rules and the padded metadata ---------------------------------------------
def test_pad_tokens_get_their_own_sequence_and_are_never_written():
    meta = _meta([8, 16, 5], [4, 8, 0], cache_only=[True, False, False])
    meta.validate()
    ids, pos = torch.arange(29) + 10, meta.positions.clone()
    buckets = _buckets()
    bucket = buckets.choose(meta)
    assert bucket == Bucket(num_seqs=3, num_tokens=29, padded_seqs=4, padded_tokens=32)  # S+1 = 4 holds the pad tokens
    p_ids, p_pos, p = buckets.pad(bucket, ids, pos, meta)
    p.validate()
    assert p.num_tokens == 32 and p.num_seqs == 4 and p_ids.shape == p_pos.shape == (32,)
    assert p.cu_seqlens_q.tolist() == [0, 8, 24, 29, 32]  # the pad tokens: sequence 3 alone
    # The real rows are the original step, unchanged.
    for name in ("positions", "slot_mapping", "key_lo", "key_hi"):
        assert torch.equal(getattr(p, name)[:29], getattr(meta, name))
    for name in ("context_lens", "cache_only", "page_table"):
        assert torch.equal(getattr(p, name)[:3], getattr(meta, name))
    assert torch.equal(p.logits_indices, meta.logits_indices) and torch.equal(p_ids[:29], ids)
    # All pad tokens alike, never written to the cache, seeing only each other.
    assert p_ids[29:].tolist() == [0] * 3 and p_pos[29:].tolist() == p.positions[29:].tolist() == [0] * 3
    assert p.slot_mapping[29:].tolist() == [-1] * 3
    assert p.key_lo[29:].tolist() == [0] * 3 and p.key_hi[29:].tolist() == [1] * 3
    assert p.context_lens[3] == 0 and not p.cache_only[3] and (p.page_table[3] == -1).all()


def test_sequence_bucket_without_pad_tokens_adds_empty_sequences():
    meta = _meta([8, 8, 8], [0, 4, 12])
    buckets = _buckets()
    bucket = buckets.choose(meta)
    assert bucket == Bucket(3, 24, 4, 24)  # N already a multiple of 8: no pad sequence needed
    p_ids, _, p = buckets.pad(bucket, torch.arange(24), meta.positions, meta)
    p.validate()
    assert p.cu_seqlens_q.tolist() == [0, 8, 16, 24, 24] and p_ids.shape == (24,)
    assert p.context_lens.tolist() == [0, 4, 12, 0] and (p.page_table[3] == -1).all()


def test_bucket_choice():
    b = _buckets()
    assert b.choose(_meta([8, 8, 8, 8], [0] * 4)) == Bucket(4, 32, 4, 32)  # exact: nothing padded
    assert not b.choose(_meta([8, 8, 8, 8], [0] * 4)).padded
    assert b.choose(_meta([8, 8, 8, 3], [0] * 4)) == Bucket(4, 27, 8, 32)  # pad tokens need S+1 = 5 -> 8
    assert b.choose(_meta([3], [0])) == Bucket(1, 3, 2, 8)
    assert b.choose(_meta([16, 16], [0, 0])) == Bucket(2, 32, 2, 32)  # max_seq_tokens: still decode
    assert b.choose(_meta([8, 17], [0, 0])) is None  # a prompt being prefilled: eager
    assert b.choose(_meta([8] * 9, [0] * 9)) is None  # more sequences than the largest bucket
    assert b.choose(_meta([8] * 7 + [3], [0] * 8)) is None  # 8 sequences + the pad one > 8
    assert _buckets(max_tokens=24).choose(_meta([8, 8, 5], [0] * 3)) == Bucket(3, 21, 4, 24)  # N_b = max_tokens
    assert _buckets(max_tokens=24).choose(_meta([8, 8, 9], [0] * 3)) is None  # N_b = 32 > max_tokens
    assert _buckets(max_tokens=24).choose(_meta([8, 8, 8], [0] * 3)) == Bucket(3, 24, 4, 24)
    assert _buckets(granularity=None).choose(_meta([3, 2], [0, 0])) == Bucket(2, 5, 2, 5)  # g = 1
    # Token ladder: multiples of g up to 8 g, then four steps per doubling (<= 25 % padding).
    assert [b.token_bucket(n) for n in (1, 8, 9, 64, 65, 72, 81, 128, 129)] == [8, 8, 16, 64, 80, 80, 96, 128, 160]
    assert b.choose(_meta([16, 16, 16, 16, 8], [0] * 5)) == Bucket(5, 72, 8, 80)
    on_device = _meta([8], [0])
    on_device.cu_seqlens_q = on_device.cu_seqlens_q.to("meta")  # not on the host: no sync, eager
    assert b.choose(on_device) is None


def test_shapes_cover_every_bucket_a_decode_step_can_take():
    b = _buckets()
    shapes = set(b.shapes())
    assert len(shapes) == len(b.shapes())
    for counts in ([1], [16], [8, 16], [3, 5, 7], [16] * 4, [16] * 7, [1] * 8, [16, 16, 16, 3]):
        bucket = b.choose(_meta(counts, [0] * len(counts)))
        if bucket is not None:
            assert (bucket.padded_seqs, bucket.padded_tokens) in shapes
    assert max(n for _, n in shapes) <= b.max_tokens and all(n % 8 == 0 for _, n in shapes)


def test_default_config_buckets_the_steps_of_batch_64():
    """Default runtime (buckets up to 64, max_num_batched_tokens 4096), block 32, buffer 1: a step
    of 64 sequences x 32 tokens (k=1) and one of 64 x 64 (k=32: the finished block with the new
    one, 4,096 tokens) are graphed unpadded; 62 x 64 + 40 pads to the 4,096-token graph (63 x 64 + 40
    would need a 65th sequence for its pad tokens: eager)."""
    from types import SimpleNamespace

    from diffulex.config.runtime import RuntimeConfig
    from diffulex.config.strategy import MultiBDStrategyConfig

    strategy = MultiBDStrategyConfig(block_size=MultiBDStrategyConfig.DEFAULT_BLOCK_SIZE,
                                     buffer_size=MultiBDStrategyConfig.DEFAULT_BUFFER_SIZE)
    assert (strategy.block_size, strategy.buffer_size) == (32, 1)
    rt = RuntimeConfig()
    b = GraphBuckets.for_config(SimpleNamespace(strategy=strategy, runtime=rt))
    assert b.max_seq_tokens == 64 and b.max_tokens == rt.max_num_batched_tokens == 4096
    assert b.choose(_meta([32] * 64, [128] * 64, max_pages=40)) == Bucket(64, 2048, 64, 2048)
    assert b.choose(_meta([64] * 64, [96] * 64, max_pages=40)) == Bucket(64, 4096, 64, 4096)
    assert b.choose(_meta([64] * 63 + [40], [96] * 64, max_pages=40)) is None  # S + 1 = 65 > 64: eager
    assert b.choose(_meta([64] * 62 + [40], [96] * 63, max_pages=40)) == Bucket(63, 4008, 64, 4096)
    assert b.choose(_meta([64] * 64 + [1], [96] * 65, max_pages=40)) is None  # 65 sequences
    assert (64, 4096) in b.shapes() and max(n for _, n in b.shapes()) == 4096
    # The token budget caps the buckets (the scheduler never feeds more); a step's bucket fits it.
    def buckets(budget: int) -> GraphBuckets:
        runtime = RuntimeConfig(max_num_batched_tokens=budget)
        return GraphBuckets.for_config(SimpleNamespace(strategy=strategy, runtime=runtime))

    small = buckets(1000)
    assert small.max_tokens == small.token_bucket(1000) == 1024
    assert small.choose(_meta([64] * 15 + [40], [0] * 16, max_pages=16)) == Bucket(16, 1000, 32, 1024)
    assert buckets(10304).max_tokens == 4096  # 64 sequences x 64 tokens, however large the budget


def test_pad_rows():
    bucket = Bucket(2, 5, 4, 8)
    mask = GraphBuckets.pad_rows(bucket, torch.tensor([True, False, True, True, False]))
    assert mask.tolist() == [True, False, True, True, False, False, False, False]
    emb = GraphBuckets.pad_rows(bucket, torch.ones(5, 3))
    assert emb.shape == (8, 3) and emb[5:].eq(0).all() and emb[:5].eq(1).all()


def test_graph_extras_pad_per_token_inputs():
    """dmax's dense soft inputs and per-token tensors get pad rows that change nothing."""
    from types import SimpleNamespace

    from diffulex.engine.model_runner import ModelRunner
    from diffulex.engine.soft_inputs import SoftInputs

    runner = SimpleNamespace(device=torch.device("cpu"), model=SimpleNamespace(graph_inputs=lambda e: e))
    soft = SoftInputs(torch.tensor([1, 4]), torch.tensor([[7, 8], [9, 10]]), torch.full((2, 2), 0.25), mask_id=3)
    bucket = Bucket(2, 5, 4, 8)
    extras = {"soft_inputs": soft, "canvas_mask": torch.tensor([True] * 5), "rows": torch.ones(5, 3)}
    out = ModelRunner.graph_extras(runner, extras, 5, bucket)
    unpadded = ModelRunner.graph_extras(runner, extras, 5)
    for name in ("soft_mask", "soft_ids", "soft_probs", "canvas_mask", "rows"):
        assert out[name].shape[0] == 8 and torch.equal(out[name][:5], unpadded[name]), name
        assert not out[name][5:].any(), name  # pad rows: zeros / False
    assert out["soft_params"] == unpadded["soft_params"] == (3, True, 1.0)


# -- (b) attention on padded metadata --------------------------------------------
def _attend(ops, meta, q, k, v, k_cache, v_cache):
    k_cache, v_cache = k_cache.clone(), v_cache.clone()
    ops.store_kvcache(k, v, k_cache, v_cache, meta.slot_mapping)
    return ops.paged_attention(q, k, v, k_cache, v_cache, meta, scale=0.5), k_cache, v_cache


@pytest.mark.parametrize("ops", [reference_ops, triton_ops], ids=["reference", "triton"])
@pytest.mark.parametrize("counts, contexts, cache_only", [
    ([8, 16, 5], [4, 8, 0], [False, False, False]),
    ([8, 3], [8, 12], [True, False]),  # a dual-cache sequence
    ([8, 8, 8], [0, 4, 12], [False, False, False]),  # only empty pad sequences
])
def test_attention_on_padded_metadata(ops, counts, contexts, cache_only):
    """Real rows as without padding (the reference, and the Triton kernel under the interpreter)."""
    gen = torch.Generator().manual_seed(0)
    meta = _meta(counts, contexts, cache_only)
    meta.validate()
    n, hq, hkv, d = meta.num_tokens, 4, 2, 8
    q, k, v = (torch.randn(n, h, d, generator=gen) for h in (hq, hkv, hkv))
    k_cache, v_cache = (torch.randn(32, PAGE, hkv, d, generator=gen) for _ in range(2))
    buckets = _buckets()
    bucket = buckets.choose(meta)
    assert bucket is not None and bucket.padded
    _, _, p = buckets.pad(bucket, torch.zeros(n, dtype=torch.long), meta.positions, meta)
    extra = bucket.padded_tokens - n
    # Pad rows are alike (as the model makes them: same token, same position).
    pq, pk, pv = (torch.cat([t, t[:1].expand(extra, -1, -1) * 0 + 0.3]) for t in (q, k, v))
    want, want_k, want_v = _attend(ops, meta, q, k, v, k_cache, v_cache)
    got, got_k, got_v = _attend(ops, p, pq, pk, pv, k_cache, v_cache)
    exact = ops is reference_ops
    torch.testing.assert_close(got[:n], want, rtol=0 if exact else None, atol=0 if exact else None)
    assert torch.equal(got_k, want_k) and torch.equal(got_v, want_v)  # pad tokens write nothing
    if extra:
        assert torch.isfinite(got[n:]).all() and (got[n:] == got[n]).all()  # identical pad outputs


# -- (c) end to end with the fake capture ------------------------------------------------------
PROMPTS = [[(5 * i + 3 * j) % 200 + 20 for i in range(n)] for j, n in enumerate((5, 11, 7))]
MAX_TOKENS = (16, 8, 24)  # the requests finish at different steps: S goes 3 -> 2 -> 1
KW = dict(dtype="float32", block_size=8, page_size=4, decoding_strategy="multi_bd", enable_prefix_caching=False)


def _generate(llm) -> list[list[int]]:
    return [t.token_ids for t in llm.generate(PROMPTS, [SamplingParams(max_tokens=m) for m in MAX_TOKENS])]


def _graphed_engine(llm, ops: str, forward=None) -> tuple[DecodeGraphs, dict]:
    """Fake graphs in front of ``llm``'s runner; returns them and counters of padded steps."""
    runner = llm.runner
    for module in runner.model.modules():
        if getattr(module, "uses_kernels", False):
            module.kernels = ops
    runner.kernels = "triton"  # the runner's switch for graphs (the fake capture tolerates host syncs)
    buckets = runner.buckets
    graphs = DecodeGraphs(fake_cuda_graphs.recording(forward or runner.graph_forward), runner.device,
                          max_tokens=buckets.max_tokens, max_pages=64, max_graphs=2 * len(buckets.shapes()))
    runner.graphs = graphs
    seen = {"bucket": None, "padded_replays": 0, "pad_token_replays": 0, "padded_steps": 0}
    choose, run = buckets.choose, graphs.run

    def choose_spy(meta):
        seen["bucket"] = bucket = choose(meta)
        seen["padded_steps"] += bool(bucket is not None and bucket.padded)
        return bucket

    def run_spy(*args, **kw):
        before = graphs.replays
        out = run(*args, **kw)
        if graphs.replays > before and seen["bucket"].padded:
            seen["padded_replays"] += 1
            bucket = seen["bucket"]
            seen["pad_token_replays"] += bucket.padded_tokens > bucket.num_tokens
        return out

    buckets.choose, graphs.run = choose_spy, run_spy
    return graphs, seen


@pytest.mark.parametrize("family, strategy, ops", [
    ("llada", dict(decoding_strategy="d2f", buffer_size=2), "torch"),  # irregular token counts: pad tokens
    ("llada2", dict(decoding_strategy="dmax", sampling_mode="edit"), "torch"),  # MoE; soft inputs padded
    ("fast_dllm_v2", dict(decoding_strategy="fast_dllm_v2", use_dual_cache=True), "torch"),  # cache-only steps
    ("diffusion_gemma", dict(decoding_strategy="diffusion_gemma", block_size=None, page_size=16), "torch"),
])
def test_bucketed_replays_give_the_eager_tokens(tiny_path, monkeypatch, family, strategy, ops):
    kw = {**KW, **strategy}
    with Diffulex(tiny_path(family), **kw) as llm:
        eager = _generate(llm)
    fake_cuda_graphs.install(monkeypatch)
    with Diffulex(tiny_path(family), **kw) as llm:
        sizes, buckets = llm.config.runtime.cuda_graph_batch_sizes, llm.runner.buckets
        g = buckets.granularity
        graphs, seen = _graphed_engine(llm, ops)
        graphed = _generate(llm)
        keys = list(graphs.entries)
    assert graphed == eager
    assert graphs.replays > graphs.captures >= 1
    assert seen["padded_replays"] >= 1
    if family in ("llada", "fast_dllm_v2"):  # token counts not a multiple of the block: pad tokens
        assert seen["pad_token_replays"] >= 1
    for key in keys:  # only bucket shapes were captured
        n_b = key[0][0]
        s_b = dict((name, shape) for name, shape, _ in key[1])["context_lens"][0]
        assert s_b in sizes and n_b % g == 0 and n_b == buckets.token_bucket(n_b), key


@pytest.mark.parametrize("counts", [
    [32] * 64,  # k=1, batch 64: 2,048 tokens
    [64] * 64,  # k=32, batch 64: the finished block with the new one, 4,096 tokens
    [64] * 62 + [40],  # 4,008 tokens padded to 4,096 (the pad tokens' sequence is the 64th)
], ids=["64x32", "64x64", "62x64+40"])
def test_batch_64_steps_replay_with_the_eager_logits(tiny_path, monkeypatch, counts):
    """The default buckets (block 32, buffer 1, runtime defaults) graph the big steps of batch 64;
    the capture's and the replay's logits are the eager, unpadded step's (same greedy tokens)."""
    kw = dict(dtype="float32", page_size=PAGE, decoding_strategy="multi_bd", enable_prefix_caching=False,
              max_model_len=256)
    contexts = [32 * (i % 3) for i in range(len(counts))]  # some cached keys (the cache's zeros)
    meta = _meta(counts, contexts, max_pages=32)
    n = meta.num_tokens
    ids = (torch.arange(n) * 7) % 200 + 20
    fake_cuda_graphs.install(monkeypatch)
    with Diffulex(tiny_path("llada"), **kw) as llm:
        runner = llm.runner
        assert runner.page_count > len(counts) * 32 and runner.buckets.max_tokens == 4096
        eager = runner.run(ids, meta.positions, meta)  # graphs off: the unpadded step
        graphs, seen = _graphed_engine(llm, "torch")
        captured = runner.run(ids, meta.positions, meta)  # the capture's warm-up forward
        replayed = runner.run(ids, meta.positions, meta)
        bucket = seen["bucket"]
    assert bucket is not None and bucket.padded_seqs == 64 and bucket.padded_tokens == (2048 if n <= 2048 else 4096)
    assert bucket.padded == (n != 4096 and n != 2048)
    assert graphs.captures == 1 and graphs.replays == 1
    assert eager.shape == captured.shape == replayed.shape == (meta.logits_indices.shape[0], eager.shape[1])
    for got in (captured, replayed):
        torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-5)
        assert torch.equal(got.argmax(-1), eager.argmax(-1))  # the greedy tokens


def _forward_sizes(runner) -> list[int]:
    """Record the token count of every eager forward of ``runner``'s model."""
    sizes, model_forward = [], runner.model.forward

    def forward(input_ids, positions, meta, *args, **kwargs):
        sizes.append(positions.shape[0])
        return model_forward(input_ids, positions, meta, *args, **kwargs)

    runner.model.forward = forward
    return sizes


def test_failed_capture_runs_the_unpadded_step_eagerly(tiny_path, monkeypatch):
    with Diffulex(tiny_path("llada"), **KW) as llm:
        eager_sizes = _forward_sizes(llm.runner)
        eager = _generate(llm)
    fake_cuda_graphs.install(monkeypatch)
    with Diffulex(tiny_path("llada"), **KW) as llm:
        def capture(*args):
            raise RuntimeError("capture failed")

        graphs, seen = _graphed_engine(llm, "torch", forward=capture)
        sizes = _forward_sizes(llm.runner)
        graphed = _generate(llm)
    assert graphed == eager and graphs.replays == graphs.captures == 0 and seen["padded_steps"] >= 1
    assert sizes == eager_sizes  # the eager fallback ran the unpadded steps


def test_page_tables_padded_to_the_short_or_the_longest_width(monkeypatch):
    """Steps whose page tables fit ``short_pages`` share a graph with that width (the attention
    then launches without a split axis); longer ones get the longest width. Replays see the
    step's own pages, -1 beyond."""
    fake_cuda_graphs.install(monkeypatch)
    widths = []

    def forward(ids, pos, meta, extras):  # [N, 1]: depends on every page-table entry
        widths.append(meta.page_table.shape[1])
        return ids.float()[:, None] + (meta.page_table + 1).float().sum()

    graphs = DecodeGraphs(fake_cuda_graphs.recording(forward), torch.device("cpu"), max_tokens=64,
                          max_pages=8, short_pages=2)
    for width, context in ((1, 0), (2, 4), (3, 8), (1, 0), (6, 16), (2, 0)):
        meta = _meta([4], [context], max_pages=width)
        expected = forward(torch.arange(4), meta.positions, meta, {}).clone()  # -1 padding adds nothing
        out = graphs.run(torch.arange(4), meta.positions, meta)  # a capture returns its warm-up result
        assert out is not None and torch.equal(out[0], expected)
        assert torch.equal(out[1], meta.logits_indices)  # the logits rows, from the static inputs
    assert sorted({key[3] for key in graphs.entries}) == [2, 8]
    assert graphs.captures == 2 and graphs.replays == 4
    assert set(widths) == {1, 2, 3, 6, 8}  # the eager references, then the captured widths 2 and 8
