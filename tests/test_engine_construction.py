"""Engine construction along the seed's load path: aliases, workers, failure cleanup."""

from __future__ import annotations

import gc
import logging
import os
import sys

import multiprocessing as mp
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from diffulex import Diffulex, DiffulexEngine  # noqa: E402
from diffulex.config import Config, D2FStrategyConfig  # noqa: E402
from diffulex.engine.components import EngineComponents  # noqa: E402
from diffulex.registry import AutoKVCacheManager, AutoModelRunner, AutoReq, AutoScheduler  # noqa: E402


def _alive(pids):
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        alive.append(pid)
    return alive


def test_importing_strategy_registers_every_builtin():
    import diffulex.strategy  # noqa: F401

    for reg in (AutoReq, AutoScheduler, AutoKVCacheManager, AutoModelRunner):
        assert {"multi_bd", "d2f", "dmax", "fast_dllm_v2", "diffusion_gemma", "vanilla"} <= set(reg.names())
    with pytest.raises(ValueError, match="registered names: .*multi_bd"):
        AutoScheduler.get("beam_search")


def test_single_rank_engine_builds_and_exits_idempotently(tiny_path):
    llm = Diffulex(tiny_path("llada2"), model_name="llada2_mini", decoding_strategy="multi_bd",
                   sampling_mode="naive", tensor_parallel_size=1, data_parallel_size=1)
    assert isinstance(llm, DiffulexEngine)
    assert llm.config.model.name == "llada2_mini"
    assert llm.tokenizer is llm.config.tokenizer
    assert llm.runner.kv_caches and llm.scheduler is not None
    assert gc.get_freeze_count() > 0  # the loaded model is kept out of the cyclic collector
    llm.exit()
    llm.exit()
    assert llm.is_closed and llm.runner is None
    assert gc.get_freeze_count() == 0  # and handed back to it, so nothing of the engine outlives it


def test_flat_aliases_reach_the_config_tree_and_unrelated_keywords_are_named(tiny_path, caplog):
    with caplog.at_level(logging.WARNING, logger="diffulex.engine"):
        with Diffulex(tiny_path("llada2"), decoding_strategy="d2f", block_size=16, buffer_size=2,
                      accept_threshold=0.8, page_size=16, max_model_len=256, mask_token_id=3,
                      device_map="auto", use_tqdm=True) as llm:
            cfg = llm.config
    assert isinstance(cfg.strategy, D2FStrategyConfig)
    assert (cfg.strategy.block_size, cfg.strategy.buffer_size, cfg.strategy.accept_threshold) == (16, 2, 0.8)
    assert (cfg.cache.page_size, cfg.runtime.max_model_len, cfg.model.mask_token_id) == (16, 256, 3)
    warnings = [r.getMessage() for r in caplog.records if "ignoring" in r.getMessage()]
    assert len(warnings) == 1 and "device_map" in warnings[0] and "use_tqdm" in warnings[0]


def test_engine_accepts_a_built_config(tiny_path):
    cfg = Config(tiny_path("llada2"), accept_threshold=0.7)
    with Diffulex(cfg) as llm:
        assert llm.config is cfg
    with pytest.raises(ValueError, match="inside the Config"):
        Diffulex(cfg, block_size=8)


def test_two_ranks_start_answer_and_leave_no_process(tiny_path):
    llm = Diffulex(tiny_path("llada2"), tensor_parallel_size=2)
    try:
        pids = [p.pid for p in llm.workers.processes]
        assert llm.call_all("ping") == [0, 1]
        shapes = [d["pages"] for d in llm.call_all("describe")]
        assert shapes[0] == shapes[1] > 0
        # Tensor parallel: each rank holds half the KV heads.
        assert llm.runner.kv_cache_spec()[0][0] == llm.config.checkpoint.num_key_value_heads // 2
        assert llm.runner.kv_caches[0][0].shape[2] == llm.config.checkpoint.num_key_value_heads // 2
    finally:
        llm.exit()
    assert not _alive(pids)
    assert not mp.active_children()
    # The process group was left: a second multi-rank engine can start in this process.
    with Diffulex(tiny_path("llada2"), data_parallel_size=2) as llm2:
        assert llm2.call_all("ping") == [0, 1]


def test_failure_in_a_worker_is_reraised_and_cleans_up(tiny_path):
    from engine_helpers import FailOnRank1Runner

    comps = EngineComponents.for_strategy("multi_bd").replace(model_runner=FailOnRank1Runner)
    with pytest.raises(RuntimeError, match="boom in worker rank 1") as info:
        Diffulex(tiny_path("llada2"), data_parallel_size=2, components=comps, distributed_timeout_seconds=60)
    assert "worker rank 1" in "".join(getattr(info.value, "__notes__", []))
    assert not mp.active_children()


def test_failure_on_rank0_with_workers_waiting_cleans_up(tiny_path):
    from engine_helpers import FailOnRank0Runner

    comps = EngineComponents.for_strategy("multi_bd").replace(model_runner=FailOnRank0Runner)
    with pytest.raises(KeyError, match="boom on rank 0"):
        Diffulex(tiny_path("llada2"), tensor_parallel_size=2, components=comps, distributed_timeout_seconds=60)
    assert not mp.active_children()


def test_bad_config_fails_before_any_process_starts(tmp_path):
    with pytest.raises(ValueError, match="model.path"):
        Diffulex(str(tmp_path / "missing"), tensor_parallel_size=2)
    assert not mp.active_children()


def test_unrelated_keywords_are_ignored_but_near_misses_are_errors(tiny_path, caplog):
    import logging

    from diffulex import Diffulex

    with caplog.at_level(logging.WARNING, logger="diffulex.engine"):
        llm = Diffulex(tiny_path("llada2"), low_cpu_mem_usage=True, device_map="auto")
    llm.exit()
    assert "device_map, low_cpu_mem_usage" in caplog.text  # the seed's rule: ignored, named
    with pytest.raises(ValueError, match=r"'temprature'; did you mean 'temperature'\? It is a SamplingParams"):
        Diffulex(tiny_path("llada2"), temprature=0.0)
    with pytest.raises(ValueError, match=r"did you mean 'max_num_seqs'"):
        Diffulex(tiny_path("llada2"), max_num_seq=4)
    with pytest.raises(ValueError, match=r"did you mean 'decoding_strategy'"):
        Diffulex(tiny_path("llada2"), decoding_stratgy="d2f")
