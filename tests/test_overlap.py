"""The overlapped decoding loop (runtime.overlap) gives the synchronous loop's outputs token for token.

On CPU nothing overlaps (every op runs when called), but the whole mechanism runs: the guess of
the next step, the device-side writing of the previous step's fills into its inputs, the check
against the real schedule, the discarded guesses and their reserved KV pages. Each case also
asserts that guesses were used (``hits``) and discarded (``misses``), so a loop that never
guesses, or never checks, fails.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import fake_cuda_graphs
from triton_interp import interpreted, triton_interpreter  # noqa: F401  (autouse fixture)

with interpreted():  # the graphed case imports the Triton kernel modules: decorate them interpreted
    try:
        import diffulex.kernels.triton  # noqa: F401
    except ImportError:  # no triton: the graphed case skips
        pass
from diffulex import Diffulex, SamplingParams
from diffulex.engine.kv_cache_manager import KVCacheManager
from diffulex.engine.overlap import source_rows, write_fills

B = 8
BASE = dict(block_size=B, page_size=B, dtype="float32")
SUPPORTED = {  # family -> engine keywords of a strategy whose sampler queues its fills on the device
    "llada2-multi_bd-K4": ("llada2", dict(decoding_strategy="multi_bd", buffer_size=4, accept_threshold=0.005)),
    "llada2-multi_bd-K1": ("llada2", dict(decoding_strategy="multi_bd", buffer_size=1, accept_threshold=0.005)),
    "llada-d2f": ("llada", dict(decoding_strategy="d2f", buffer_size=2, accept_threshold=0.005)),
    "dream-d2f": ("dream", dict(decoding_strategy="d2f", buffer_size=4, accept_threshold=0.005)),
    "sdar-multi_bd": ("sdar", dict(decoding_strategy="multi_bd", buffer_size=2, accept_threshold=0.005)),
    "fast_dllm_v2-single-cache": ("fast_dllm_v2", dict(decoding_strategy="fast_dllm_v2", use_dual_cache=False)),
}
UNSUPPORTED = {  # strategies the loop does not guess after (their reason in overlap_stats.skipped)
    "fast_dllm_v2-dual-cache": ("fast_dllm_v2", dict(decoding_strategy="fast_dllm_v2", use_dual_cache=True),
                                "writes"),
    "llada2-dmax": ("llada2", dict(decoding_strategy="dmax", sampling_mode="edit"), "sampler"),
    "diffusion_gemma": ("diffusion_gemma", dict(decoding_strategy="diffusion_gemma", block_size=None,
                                                page_size=16), "sampler"),
}


def _prompts(lens=(5, 8, 13, 16, 21), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 270, (n,), generator=g).tolist() for n in lens]


def _run(path, kw, prompts, params, overlap, observers=(), always_guess=True):
    with Diffulex(path, overlap=overlap, observers=observers, **{**BASE, **kw}) as llm:
        if llm.speculator is not None and always_guess:
            llm.speculator.min_hit_probability = 0.0  # guess every step: many misses to discard
        out = llm.generate(prompts, params)
        stats = llm.overlap_stats
        llm.kv_cache_manager.check_invariants()
        free = llm.kv_cache_manager.num_free_pages
        total = llm.kv_cache_manager.num_pages
    got = [(t.token_ids, t.nfe, t.finish_reason, [(s.num_decided, s.masks_left) for s in t.steps])
           for t in out.trajectories]
    return got, stats, (free, total), out


def _both(path, kw, prompts, params, observers_factory=None, always_guess=True):
    sync, none_stats, _, _ = _run(path, kw, prompts, params, False,
                                  observers_factory() if observers_factory else ())
    ov, stats, (free, total), out = _run(path, kw, prompts, params, True,
                                         observers_factory() if observers_factory else (), always_guess)
    assert none_stats is None
    assert ov == sync  # tokens, nfe, finish reasons and every step's record
    # step times partition the wall time (an overlapped step is queued during the previous one)
    assert 0 < out.prefill_time_s + out.decode_time_s <= out.wall_time_s
    assert sum(s.time_s for s in out.trajectories[0].steps) <= out.wall_time_s
    assert free == total, "pages left behind (reserved by a discarded guess?)"
    return stats, out


@pytest.mark.parametrize("name", list(SUPPORTED))
def test_overlapped_equals_synchronous(tiny_path, name):
    family, kw = SUPPORTED[name]
    stats, _ = _both(tiny_path(family), {**kw, "max_num_seqs": 3}, _prompts(),
                     SamplingParams(temperature=0.0, max_tokens=30))
    assert stats.hits >= 5 and stats.misses >= 1, stats  # guesses used, and wrong ones discarded
    assert stats.skipped.get("admission", 0) >= 1, stats  # 5 prompts, 3 slots: admissions are not guessed


def test_unlikely_guesses_are_not_made(tiny_path):
    """By default a step is guessed only when its uncertain blocks (masks beyond the sure fills) are
    unlikely to complete, by the completion counts of the real steps: far fewer misses."""
    family, kw = SUPPORTED["llada2-multi_bd-K4"]
    prompts, params = _prompts(), SamplingParams(temperature=0.0, max_tokens=30)
    always, _ = _both(tiny_path(family), {**kw, "max_num_seqs": 3}, prompts, params)
    chosen, _ = _both(tiny_path(family), {**kw, "max_num_seqs": 3}, prompts, params, always_guess=False)
    assert chosen.skipped.get("unlikely", 0) >= 5 and chosen.hits >= 3, chosen
    rate = chosen.misses / (chosen.hits + chosen.misses)
    assert rate < 0.25 and rate < always.misses / (always.hits + always.misses), (chosen, always)


def test_back_off_when_recent_guesses_miss(tiny_path):
    """d2f's misses come mostly from blocks added or forced by extra fills (not modeled): the recent
    miss rate makes the loop guess only every probe_every-th step; outputs stay the same."""
    family, kw = SUPPORTED["llada-d2f"]
    prompts, params = _prompts(), SamplingParams(temperature=0.0, max_tokens=30)
    stats, _ = _both(tiny_path(family), {**kw, "max_num_seqs": 3}, prompts, params, always_guess=False)
    assert stats.skipped.get("backoff", 0) >= 10 and stats.hits >= 3, stats
    with Diffulex(tiny_path("llada2"), overlap=True, **BASE) as llm:
        spec = llm.speculator
        assert not spec.backing_off()
        for hit in [True] * 13 + [False] * 3:  # half a window, 19 % missed
            spec.record(hit)
        assert spec.backing_off()
        spec.recent.extend([True] * 16)  # 3 of 32 missed: 9 % <= 10 %
        assert not spec.backing_off()


def test_hit_probability_from_completion_counts(tiny_path):
    with Diffulex(tiny_path("llada2"), overlap=True, **BASE) as llm:
        spec = llm.speculator
        masks, sure = torch.tensor([3, 5, 2, 0]), torch.tensor([1, 1, 8, 1])  # blocks 2 (sure) and 3 (full) certain
        prior, w = spec.prior_completion, spec.own_counts_after
        assert spec.hit_probability(masks, sure) == pytest.approx((1 - prior) ** 2)
        spec.trials[5], spec.completions[5] = 2, 0  # two blocks with 5 masks left, none completed
        # 3 masks (unseen) borrows the pooled rate of the counts >= 3; 5 masks shrinks its own towards it
        pooled = prior / 3
        assert spec.hit_probability(masks, sure) == pytest.approx((1 - pooled) * (1 - w * pooled / (2 + w)))
        spec.trials[3], spec.completions[3] = 9, 9  # blocks with 3 masks left completed every time
        pooled3 = (9 + prior) / 12
        p3 = (9 + w * pooled3) / (9 + w)
        assert spec.hit_probability(masks, sure) == pytest.approx((1 - p3) * (1 - w * pooled / (2 + w)))
        # a batch of 64 blocks that never completed at 17 trials each: guessed (64 blocks, 0.9 needed)
        spec.trials[:], spec.completions[:] = 0, 0
        spec.trials[6:] = 17  # (block 8: counts up to 8)
        assert spec.hit_probability(torch.full((64,), 6), torch.ones(64, dtype=torch.long)) > 0.9


@pytest.mark.parametrize("name", list(UNSUPPORTED))
def test_strategies_without_device_fills_run_synchronously(tiny_path, name):
    family, kw, reason = UNSUPPORTED[name]
    stats, _ = _both(tiny_path(family), kw, _prompts((5, 13)), SamplingParams(temperature=0.0, max_tokens=20))
    assert stats.hits == stats.misses == 0 and stats.skipped.get(reason, 0) >= 3, stats


@pytest.fixture(scope="module")
def eos_ckpt(tiny_path, tmp_path_factory):
    """The tiny LLaDA2 with lm_head row EOS(1) = 1.05 x row 87: EOS is actually generated."""
    dst = tmp_path_factory.mktemp("overlap_eos") / "llada2"
    shutil.copytree(tiny_path("llada2"), dst)
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    shard = dst / index["weight_map"]["lm_head.weight"]
    tensors = load_file(str(shard))
    head = tensors["lm_head.weight"].clone()
    head[1] = head[87] * 1.05
    tensors["lm_head.weight"] = head
    save_file(tensors, str(shard), metadata={"format": "pt"})
    return str(dst)


def test_eos_max_nfe_stop_strings_and_repetition(eos_ckpt, tiny_path):
    kw = SUPPORTED["llada2-multi_bd-K4"][1]
    _, out = _both(eos_ckpt, kw, _prompts(), SamplingParams(temperature=0.0, max_tokens=30))
    assert any(t.finish_reason == "eos" for t in out.trajectories)
    params = [SamplingParams(temperature=0.0, max_tokens=30, max_nfe=n) for n in (3, 7, 12, 40, 1)]
    _, out = _both(tiny_path("llada2"), kw, _prompts(), params)
    assert sum(t.finish_reason == "max_nfe" for t in out.trajectories) >= 3
    with Diffulex(tiny_path("llada2"), **{**BASE, **kw}) as llm:  # a stop string from a real output
        text = llm.generate(_prompts()[:1], SamplingParams(temperature=0.0, max_tokens=30)).trajectories[0].text
    stop = text[len(text) // 2:len(text) // 2 + 2]
    params = SamplingParams(temperature=0.0, max_tokens=30, stop=[stop], max_repetition_run=3)
    _, out = _both(tiny_path("llada2"), kw, _prompts(), params)
    assert any(t.finish_reason == "stop" for t in out.trajectories)


def test_preemption_and_prefix_caching(tiny_path):
    kw = {**SUPPORTED["llada2-multi_bd-K4"][1], "num_pages": 14}  # too few pages for 5 requests: preemptions
    prompts = _prompts()
    stats, _ = _both(tiny_path("llada2"), kw, prompts + prompts[:2], SamplingParams(temperature=0.0, max_tokens=30))
    assert stats.hits >= 5, stats
    kw = {**SUPPORTED["llada-d2f"][1], "enable_prefix_caching": True}
    shared = _prompts((16,), seed=3)[0]
    prompts = [shared + p for p in _prompts((3, 9), seed=4)] + [shared]
    stats, _ = _both(tiny_path("llada"), kw, prompts, SamplingParams(temperature=0.0, max_tokens=20))
    assert stats.hits >= 5, stats


def test_sampled_requests_are_not_guessed_and_keep_their_draws(tiny_path):
    kw = SUPPORTED["llada2-multi_bd-K4"][1]
    params = [SamplingParams(temperature=0.8, seed=7, max_tokens=20), SamplingParams(temperature=0.0, max_tokens=20)]
    stats, _ = _both(tiny_path("llada2"), kw, _prompts((5, 13)), params)
    assert stats.skipped.get("sampled", 0) >= 3, stats


class _AbortOnce:
    """Aborts request ``victim`` from inside the step that gives it its ``at``-th record."""

    def __init__(self, victim: int, at: int) -> None:
        self.engine, self.victim, self.at, self.seen = None, victim, at, 0

    def on_step(self, req_id, record):
        if req_id == self.victim:
            self.seen += 1
            if self.seen == self.at:
                self.engine.abort_request(req_id)

    def on_request_finished(self, traj):
        pass

    def on_generate_end(self, outputs):
        pass

    def close(self):
        pass


def test_abort_from_an_observer(tiny_path):
    kw = SUPPORTED["llada2-multi_bd-K4"][1]
    results = []
    for overlap in (False, True):
        obs = _AbortOnce(victim=1, at=3)
        with Diffulex(tiny_path("llada2"), overlap=overlap, observers=[obs], **{**BASE, **kw}) as llm:
            obs.engine = llm
            out = llm.generate(_prompts(), SamplingParams(temperature=0.0, max_tokens=30))
            assert llm.kv_cache_manager.num_free_pages == llm.kv_cache_manager.num_pages
        results.append([(t.token_ids, t.finish_reason) for t in out.trajectories])
    assert results[0] == results[1] and results[0][1][1] == "aborted"


def test_graphed_steps_take_the_fills_in_their_static_inputs(tiny_path, monkeypatch):
    """With (fake) CUDA graphs the fills are written into the replayed graph's static token ids."""
    pytest.importorskip("triton")
    from diffulex.layers.graphs import DecodeGraphs

    kw = SUPPORTED["llada2-multi_bd-K4"][1]
    prompts, params = _prompts(), SamplingParams(temperature=0.0, max_tokens=30)
    sync, _, _, _ = _run(tiny_path("llada2"), kw, prompts, params, False)
    fake_cuda_graphs.install(monkeypatch)
    with Diffulex(tiny_path("llada2"), overlap=True, **{**BASE, **kw}) as llm:
        llm.speculator.min_hit_probability = 0.0
        runner = llm.runner
        runner.kernels = "triton"  # the runner's switch for graphs; the modules keep the torch ops
        graphs = DecodeGraphs(fake_cuda_graphs.recording(runner.graph_forward), runner.device,
                              max_tokens=runner.buckets.max_tokens, max_pages=64,
                              max_graphs=2 * len(runner.buckets.shapes()))
        runner.graphs = graphs
        patched = []
        run = graphs.run
        graphs.run = lambda *a, patch=None: (patched.append(patch is not None), run(*a, patch=patch))[1]
        out = llm.generate(prompts, params)
        stats = llm.overlap_stats
    got = [(t.token_ids, t.nfe, t.finish_reason, [(s.num_decided, s.masks_left) for s in t.steps])
           for t in out.trajectories]
    assert got == sync
    assert graphs.replays > 0 and sum(patched) >= stats.hits >= 5, (graphs.replays, sum(patched), stats)


# -- the pieces ---------------------------------------------------------------------------------

def test_write_fills_and_source_rows_on_a_hand_built_pair_of_steps():
    from types import SimpleNamespace as NS

    t = lambda xs: torch.tensor(xs, dtype=torch.long)  # noqa: E731
    # Step n: request A (rows at positions 8, 9, 10), request B (row at 4).
    prev = NS(row_request=t([0, 0, 0, 1]), row_position=t([8, 9, 10, 4]))
    a, b, c = object(), object(), object()
    # Step n+1: B first (feeds positions 3..5), then C (new), then A (feeds 8..11).
    nxt = NS(meta=NS(cu_seqlens_q=t([0, 3, 5, 9])), positions=t([3, 4, 5, 0, 1, 8, 9, 10, 11]),
             row_request=t([0, 2, 2, 2]), row_position=t([5, 9, 10, 11]))
    src = source_rows(prev, [a, b], nxt, [b, c, a])
    assert src[:9].tolist() == [-1, 3, -1, -1, -1, 0, 1, 2, -1]  # token ids
    assert src[9:13].tolist() == [-1, 1, 2, -1]  # row tokens
    assert src[13:].tolist() == [3, 0, 1, 2]  # row previous tokens (position - 1)
    take = torch.tensor([True, False, True, True])
    tokens = t([50, 51, 52, 53])
    ids = write_fills(torch.from_numpy(src[:9]), take, tokens, torch.full((9,), 7))
    assert ids.tolist() == [7, 53, 7, 7, 7, 50, 7, 52, 7]  # row 1 (position 9) was not taken


def test_reserve_and_unreserve_restore_the_cache_exactly():
    kv = KVCacheManager(6, 4, 4, enable_prefix_caching=True)
    table = []
    assert kv.allocate(table, 8)
    kv.commit(table, list(range(8)), 8)  # two cached prefix pages
    kv.free(table)  # evictable now (refcount 0, keys kept)
    state = lambda: (list(kv._free), list(kv._evictable), dict(kv._key_to_page), dict(kv._page_to_key))  # noqa: E731
    before = state()
    other = []
    taken = kv.reserve(other, 20)  # 5 pages: the 4 free ones, then the least recently released cached one
    assert [p for p, _ in taken] == before[0] + before[1][:1] and other == [p for p, _ in taken]
    assert taken[-1][1] is not None and kv.reserve([], 100) is None
    kv.unreserve(taken)
    assert state() == before
    again = []
    assert kv.allocate(again, 20) and again == other  # the real allocation takes the same pages
    kv.check_invariants()


def test_snapshot_restore_keeps_container_identity(tiny_path):
    from diffulex.config import Config
    from diffulex.strategy.pipelined import BlockRequest

    cfg = Config(tiny_path("llada2"), decoding_strategy="multi_bd", block_size=B, dtype="float32")
    req = BlockRequest(0, [5, 6, 7], SamplingParams(max_tokens=16), cfg)
    canvas, state = req.canvas, req.snapshot()
    req.canvas[3] = 9
    req._open_block(1)
    req.num_cached, req.new_attr = 8, 1
    req.restore(state)
    assert req.canvas is canvas and req.canvas == [5, 6, 7] + [cfg.model.mask_token_id] * 5
    assert req.inflight == [0] and req.num_cached == 0 and not hasattr(req, "new_attr")


def test_overlap_config():
    from diffulex.config import RuntimeConfig

    with pytest.raises(ValueError, match="runtime.overlap"):
        RuntimeConfig(overlap="yes").validate()
    RuntimeConfig(overlap=None).validate()


def test_overlap_true_needs_one_rank(tiny_path):
    with pytest.raises(ValueError, match="runtime.overlap=true needs a single rank"):
        Diffulex(tiny_path("llada2"), overlap=True, tensor_parallel_size=2, **BASE)


def test_overlap_default_is_off_on_cpu(tiny_path):
    with Diffulex(tiny_path("llada2"), **BASE) as llm:
        assert llm.overlap_stats is None
