"""Tensor / data / expert parallelism end to end on CPU (gloo): greedy tokens equal one rank's."""

from __future__ import annotations

import multiprocessing as mp
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

from diffulex import Diffulex, SamplingParams  # noqa: E402
from diffulex.engine.batch import pack_batch  # noqa: E402
from diffulex.engine.data_parallel import split_batch  # noqa: E402

PROMPTS = [[(5 * i + 3 * j) % 200 + 20 for i in range(n)] for j, n in enumerate((5, 8, 13))]
KW = dict(dtype="float32", block_size=8, page_size=8, decoding_strategy="multi_bd",
          enable_prefix_caching=False, distributed_timeout_seconds=60)


def _tokens(path, **kw):
    with Diffulex(path, **{**KW, **kw}) as llm:
        assert llm.config.cache.enable_prefix_caching is False  # DP splits the batch (no fallback)
        out = llm.generate(PROMPTS, SamplingParams(max_tokens=16))
    assert not mp.active_children()
    return [t.token_ids for t in out.trajectories]


_single: dict = {}


def _reference(tiny_path, family):
    if family not in _single:
        _single[family] = _tokens(tiny_path(family))
    return _single[family]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("family, topology", [
    ("llada2", dict(tensor_parallel_size=2)),
    ("dream", dict(tensor_parallel_size=2)),
    ("llada2", dict(data_parallel_size=2)),
    ("dream", dict(data_parallel_size=2)),
    ("llada2", dict(expert_parallel_size=2)),
    ("sdar_moe", dict(expert_parallel_size=2)),
])
def test_parallel_tokens_equal_single_rank(tiny_path, family, topology):
    assert _tokens(tiny_path(family), **topology) == _reference(tiny_path, family)


@pytest.mark.timeout(90)
def test_fast_dllm_v2_dual_cache_splits_over_data_parallel_replicas(tiny_path, monkeypatch):
    """fast_dllm_v2's cache-only sub-block steps carry no extras (StepPlan.context_len): DP splits them."""
    from diffulex.engine import data_parallel

    splits = []
    real = data_parallel.forward_data_parallel

    def spy(runner, workers, replica_size, dp, reqs, batch):
        splits.append(bool(batch.meta.cache_only.any()))
        return real(runner, workers, replica_size, dp, reqs, batch)

    monkeypatch.setattr(data_parallel, "forward_data_parallel", spy)
    kw = dict(decoding_strategy="fast_dllm_v2", use_dual_cache=True)  # blocks of 8, sub-blocks of 2
    one = _tokens(tiny_path("fast_dllm_v2"), **kw)
    assert not splits
    assert _tokens(tiny_path("fast_dllm_v2"), data_parallel_size=2, **kw) == one
    assert splits and any(splits)  # cache-only steps went through the split path too


@pytest.mark.timeout(120)
@pytest.mark.parametrize("family, strategy", [("llada2", dict(decoding_strategy="dmax", sampling_mode="edit")),
                                              ("diffusion_gemma", dict(decoding_strategy="diffusion_gemma"))])
def test_strategy_extras_are_sliced_per_replica(tiny_path, monkeypatch, family, strategy):
    """dmax's soft inputs and DiffusionGemma's canvas mask / self-conditioning rows go to their replica."""
    from diffulex.engine import data_parallel

    seen = []
    real = data_parallel.forward_data_parallel

    def spy(runner, workers, replica_size, dp, reqs, batch):
        seen.append(sorted(batch.extras))
        return real(runner, workers, replica_size, dp, reqs, batch)

    monkeypatch.setattr(data_parallel, "forward_data_parallel", spy)
    kw = dict(strategy, enable_prefix_caching=False)
    if family == "diffusion_gemma":
        kw.update(block_size=None, page_size=16)
    one = _tokens(tiny_path(family), **kw)
    assert _tokens(tiny_path(family), data_parallel_size=2, **kw) == one
    assert any(keys for keys in seen)  # steps with extras took the split path


@pytest.mark.timeout(120)
def test_prefix_caching_splits_over_replicas_with_per_replica_keys(tiny_path, monkeypatch):
    """Prompts sharing a prefix: each replica reuses only its own pages; tokens equal one rank's."""
    from diffulex.engine import data_parallel

    split = []
    real = data_parallel.forward_data_parallel

    def spy(*args):
        split.append(True)
        return real(*args)

    monkeypatch.setattr(data_parallel, "forward_data_parallel", spy)
    from diffulex.engine.kv_cache_manager import KVCacheManager

    hits = []
    match = KVCacheManager.match_prefix

    def counting(self, token_ids, max_tokens, namespace=b""):
        pages, n = match(self, token_ids, max_tokens, namespace)
        hits.append((namespace, n))
        return pages, n

    monkeypatch.setattr(KVCacheManager, "match_prefix", counting)
    shared = [(7 * i) % 200 + 20 for i in range(16)]  # two whole blocks of 8
    prompts = [shared + [30 + j] for j in range(4)] + [shared]
    kw = dict(KW, enable_prefix_caching=True)
    results = []
    for dp in (1, 2):
        with Diffulex(tiny_path("llada2"), data_parallel_size=dp, **kw) as llm:
            first = llm.generate(prompts, SamplingParams(max_tokens=16))
            again = llm.generate(prompts, SamplingParams(max_tokens=16))  # hits the cached prefix pages
            results.append(([t.token_ids for t in first], [t.token_ids for t in again]))
    assert results[1] == results[0] and results[0][0] == results[0][1]
    assert split  # no whole-batch fallback
    assert {ns for ns, n in hits if n > 0} == {b"", b"dp0/", b"dp1/"}  # both replicas reused their own pages


def test_prefix_keys_are_namespaced():
    from diffulex.engine.kv_cache_manager import KVCacheManager

    kv = KVCacheManager(16, 4, 4, True)
    tokens = list(range(12))
    table: list[int] = []
    assert kv.allocate(table, 12)
    kv.commit(table, tokens, 12, b"dp0/")
    assert kv.match_prefix(tokens, 12, b"dp1/") == ([], 0)  # another replica: no reuse
    assert kv.match_prefix(tokens, 12, b"dp0/")[1] == 12


def test_soft_inputs_select_tokens_renumbers_to_the_slice():
    from diffulex.engine.soft_inputs import SoftInputs

    soft = SoftInputs(torch.tensor([1, 4, 6]), torch.tensor([[3, 5], [7, 9], [2, 8]]),
                      torch.tensor([[0.5, 0.2], [0.6, 0.1], [0.9, 0.0]]), mask_id=99)
    part = soft.select_tokens(torch.tensor([4, 5, 6, 7]), num_tokens=8)  # tokens 4..7 of the batch
    assert part.index.tolist() == [0, 2] and part.ids.tolist() == [[7, 9], [2, 8]]
    assert part.probs.tolist() == [[0.6000000238418579, 0.10000000149011612], [0.8999999761581421, 0.0]]
    assert soft.select_tokens(torch.tensor([0, 2]), 8).index.numel() == 0


def test_expert_parallel_shards_whole_experts(tiny_path):
    from diffulex.layers.moe import StackedExperts
    from diffulex.layers.parallel import TPGroup

    shards = [StackedExperts(8, 4, 6, tp=TPGroup(t, 2), ep=TPGroup(e, 2)) for e in range(2) for t in range(2)]
    assert [(s.expert_start, s.num_local) for s in shards] == [(0, 2), (2, 2), (4, 2), (6, 2)]
    with pytest.raises(ValueError, match="expert-parallel size 2"):
        StackedExperts(6, 4, 6, tp=TPGroup(0, 2), ep=TPGroup(0, 2))


def test_split_batch_slices_requests_and_reassembles_rows(tiny_path):
    """Each replica's slice is exactly the batch pack_batch builds for its requests alone."""
    with Diffulex(tiny_path("dream"), **KW) as llm:
        for p in PROMPTS:
            llm.add_request(p, SamplingParams(max_tokens=16))
        scheduled = llm.scheduler.schedule()
        reqs, plans = [r for r, _ in scheduled], [p for _, p in scheduled]
        full = pack_batch(reqs, plans, 8, llm.kv_cache_manager)
        owners = [r.req_id % 2 for r in reqs]
        slices = split_batch(full, owners, 2)
        seen = torch.cat([s.rows for s in slices]).sort().values
        assert torch.equal(seen, torch.arange(full.row_request.numel()))
        for s in slices:
            idx = [i for i, o in enumerate(owners) if o == s.replica]
            alone = pack_batch([reqs[i] for i in idx], [plans[i] for i in idx], 8, llm.kv_cache_manager)
            assert torch.equal(s.input_ids, alone.input_ids) and torch.equal(s.positions, alone.positions)
            for k, v in vars(alone.meta).items():
                got = getattr(s.meta, k)
                assert (torch.equal(got, v) if torch.is_tensor(v) else got == v), k
        for req in reqs:
            llm.scheduler.abort(req.req_id)
