"""Reusing loaded weights across engines of one process (multirun jobs)."""

from __future__ import annotations

from diffulex import Diffulex, SamplingParams
from diffulex.engine.weight_cache import WeightCache
from diffulex.models.base import DiffusionLM


def test_second_engine_reuses_the_loaded_model_and_decodes_the_same(tiny_path, monkeypatch):
    loads = []
    original = DiffusionLM.load_weights
    monkeypatch.setattr(DiffusionLM, "load_weights", lambda self, path: (loads.append(path), original(self, path)))
    cache = WeightCache()
    path = tiny_path("llada2")
    with Diffulex(path, block_size=8, page_size=8, weight_cache=cache) as a:
        first = a.generate([[20, 21, 22]], SamplingParams(max_tokens=8))[0].token_ids
    with Diffulex(path, block_size=8, page_size=8, accept_threshold=0.5, weight_cache=cache) as b:
        second = b.generate([[20, 21, 22]], SamplingParams(max_tokens=8))[0].token_ids
    assert len(loads) == 1 and (cache.loads, cache.hits) == (1, 1)
    with Diffulex(path, block_size=8, page_size=8) as fresh:  # no cache: loads again, same tokens
        assert fresh.generate([[20, 21, 22]], SamplingParams(max_tokens=8))[0].token_ids == first
    assert len(loads) == 2 and len(second) == 8


def test_another_checkpoint_or_dtype_replaces_the_cached_model(tiny_path):
    cache = WeightCache()
    with Diffulex(tiny_path("llada2"), weight_cache=cache):
        pass
    with Diffulex(tiny_path("dream"), weight_cache=cache):
        pass
    with Diffulex(tiny_path("dream"), dtype="bfloat16", weight_cache=cache):
        pass
    assert (cache.loads, cache.hits) == (3, 0)
