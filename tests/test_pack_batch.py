"""pack_batch (vectorized) equals a straightforward per-token reference, field by field.

The reference below walks every fed token and every query position in Python, calling the
request's per-position ``key_hi`` / ``key_lo`` and the page table directly: the semantics
``pack_batch`` must keep. Cases are hand-built (several requests, several spans, shift plans
with ``write_start > start``, cache-only plans, prefix-cached page tables, gaps between spans,
per-position-only request classes) and random; the last tests spy on real engines.
"""

from __future__ import annotations

import dataclasses
import random
from types import SimpleNamespace

import pytest
import torch

from diffulex.engine.batch import pack_batch, rows_on
from diffulex.engine.kv_cache_manager import KVCacheManager
from diffulex.engine.plan import StepPlan
from diffulex.strategy.diffusion_gemma import DiffusionGemmaRequest
from diffulex.strategy.fast_dllm_v2 import FastDLLMv2Request, SubBlockPlan
from diffulex.strategy.pipelined import BlockRequest
from diffulex.strategy.vanilla import VanillaRequest

MASK = 99


# ------------------------------------------------------------------------------ the reference
def reference_pack(reqs, plans, page_size):
    """The per-token construction, in plain Python (one list entry per token / row / block)."""
    ids, pos, slots, key_hi, key_lo, cu, ctx, cache_only = [], [], [], [], [], [0], [], []
    rows = {k: [] for k in ("logits", "req", "pos", "tok", "block", "plen", "prev")}
    blocks = {k: [] for k in ("forced", "quota", "req", "id", "all")}
    for r, (req, plan) in enumerate(zip(reqs, plans)):
        base = len(ids)
        for p in range(plan.start, plan.end):
            ids.append(req.canvas[p])
            pos.append(p)
            key_hi.append(req.key_hi(p))
            key_lo.append(req.key_lo(p) if hasattr(req, "key_lo") else 0)
            written = max(plan.write_start, plan.start) <= p < plan.write_end
            slots.append(req.page_table[p // page_size] * page_size + p % page_size if written else -1)
        cu.append(len(ids))
        ctx.append(plan.context_len if plan.context_len >= 0 else plan.start)  # cached keys read
        cache_only.append(bool(getattr(plan, "cache_only", False)))
        first = len(blocks["forced"])
        for i in range(len(plan.spans)):
            blocks["forced"].append(plan.forced[i])
            blocks["quota"].append(plan.quota[i] if plan.quota else -1)
            blocks["req"].append(r)
            blocks["id"].append(plan.blocks[i] if plan.blocks else i)
            blocks["all"].append(plan.force_all[i] if plan.force_all else False)
        for p in plan.query_positions():
            span = next(i for i, (_, hi) in enumerate(plan.spans) if p < hi)
            if p < plan.spans[span][0]:
                continue  # a gap between spans
            rows["logits"].append(base + p - int(plan.shift) - plan.start)
            rows["req"].append(r)
            rows["pos"].append(p)
            rows["tok"].append(req.canvas[p])
            rows["block"].append(first + span)
            rows["plen"].append(req.num_prompt_tokens)
            rows["prev"].append(req.canvas[p - 1] if p > 0 else -1)
    width = max(1, max(len(req.page_table) for req in reqs))
    table = [req.page_table + [-1] * (width - len(req.page_table)) for req in reqs]
    L = lambda xs: torch.tensor(xs, dtype=torch.long)  # noqa: E731
    B = lambda xs: torch.tensor(xs, dtype=torch.bool)  # noqa: E731
    return {
        "input_ids": L(ids), "positions": L(pos), "row_request": L(rows["req"]), "row_position": L(rows["pos"]),
        "row_token": L(rows["tok"]), "row_block": L(rows["block"]), "block_forced": B(blocks["forced"]),
        "block_quota": L(blocks["quota"]), "block_request": L(blocks["req"]), "block_id": L(blocks["id"]),
        "block_force_all": B(blocks["all"]), "row_prompt_len": L(rows["plen"]), "row_prev_token": L(rows["prev"]),
        "meta.cu_seqlens_q": L(cu), "meta.positions": L(pos), "meta.context_lens": L(ctx),
        "meta.page_table": L(table), "meta.slot_mapping": L(slots), "meta.key_lo": L(key_lo),
        "meta.key_hi": L(key_hi), "meta.cache_only": B(cache_only), "meta.logits_indices": L(rows["logits"]),
    }


def assert_same(batch, ref, page_size):
    assert batch.meta.page_size == page_size
    for name, want in ref.items():
        obj, attr = (batch.meta, name[5:]) if name.startswith("meta.") else (batch, name)
        got = getattr(obj, attr)
        assert got.dtype == want.dtype, name
        assert got.is_contiguous(), name
        assert torch.equal(got, want), f"{name}: {got.tolist()} != {want.tolist()}"


def check(reqs, plans, page_size=8):
    kv = KVCacheManager(64, page_size, 8, enable_prefix_caching=False)
    batch = pack_batch(reqs, plans, page_size, kv)
    assert_same(batch, reference_pack(reqs, plans, page_size), page_size)
    return batch


# ------------------------------------------------------------------------------ hand-built requests
def _fill(req, req_id, prompt, canvas_len, pages, block=8):
    req.req_id, req.prompt_token_ids, req.page_table = req_id, list(prompt), list(pages)
    req.canvas = list(prompt) + [MASK] * (canvas_len - len(prompt))
    for i in range(len(prompt), canvas_len, 3):  # some decided tokens among the masks
        req.canvas[i] = 200 + i
    req.block_size, req.mask_id = block, MASK
    return req


def block_req(req_id, prompt_len, canvas_len, pages, prefix_full=False, cls=BlockRequest):
    req = _fill(cls.__new__(cls), req_id, range(10 + req_id, 10 + req_id + prompt_len), canvas_len, pages)
    req.prefix_full = prefix_full
    return req


def plan(start, end, write_start, write_end, spans, shift=False, **kw):
    k = len(spans)
    kw.setdefault("forced", [i % 2 == 0 for i in range(k)])
    return StepPlan(start=start, end=end, write_start=write_start, write_end=write_end, spans=spans, shift=shift,
                    **kw)


def test_several_requests_spans_writes_and_prefix_cached_tables():
    reqs = [
        block_req(0, 5, 24, [3]),  # prefill: row 0 at position 0 (previous token -1), three blocks in flight
        block_req(1, 13, 24, [5, 2, 9]),  # block 1 committed: its KV written with this forward
        block_req(2, 16, 32, [5, 7, 3, 11]),  # shares page 5 with request 1 (a cached prefix), starts at 16
        block_req(3, 4, 16, [], prefix_full=True),  # d2f-style prompt rule, an empty page table
    ]
    plans = [
        plan(0, 24, 0, 0, [(0, 8), (8, 16), (16, 24)], quota=[-1, 2, -1], blocks=[0, 1, 2],
             force_all=[False, False, True]),
        plan(8, 24, 8, 16, [(16, 24)], blocks=[2]),
        plan(16, 32, 16, 16, [(16, 24), (24, 32)], blocks=[2, 3]),
        plan(0, 16, 0, 0, [(0, 8), (8, 16)]),
    ]
    batch = check(reqs, plans)
    assert batch.meta.slot_mapping[24:32].tolist() == list(range(16, 24))  # request 1, positions 8..15, page 2


def test_shift_plans_refeed_the_last_cached_token():
    reqs = [block_req(0, 12, 32, [4, 6, 8]), block_req(1, 6, 16, [1, 2]), block_req(2, 3, 8, [0])]
    plans = [
        plan(15, 32, 16, 24, [(24, 32)], shift=True, blocks=[3]),  # write_start > start, a block committed
        plan(7, 16, 8, 8, [(8, 16)], shift=True, blocks=[1]),  # the row of position 8 is the output at 7
        plan(0, 8, 0, 0, [(0, 8)], shift=True, blocks=[0]),  # first step: no token before the prompt
    ]
    check(reqs, plans)


def test_cache_only_sub_block_plans_read_their_context_len():
    reqs = [block_req(i, p, 32, [1 + i, 9 + i, 17 + i, 25 + i], cls=FastDLLMv2Request) for i, p in enumerate((5, 9))]
    plans = [
        SubBlockPlan(start=15, end=20, write_start=16, write_end=20, spans=[(16, 20)], forced=[True], quota=[-1],
                     blocks=[2], shift=True, cache_only=True, context_len=24),
        SubBlockPlan(start=8, end=16, write_start=8, write_end=16, spans=[(8, 12)], forced=[True], quota=[-1],
                     blocks=[1], shift=True, seed=8),
    ]
    batch = check(reqs, plans)
    assert batch.meta.context_lens.tolist() == [24, 8] and batch.extras == {}


@dataclasses.dataclass
class ListPlan(StepPlan):
    """Query positions as a list (not a range), to exercise the generic walk."""

    positions: list = dataclasses.field(default_factory=list)

    def query_positions(self):
        return list(self.positions)


def test_gaps_between_spans_and_non_range_query_positions():
    reqs = [block_req(0, 4, 32, [0, 1, 2, 3]), block_req(1, 4, 32, [4, 5, 6, 7]), block_req(2, 4, 32, [8, 9])]
    plans = [
        plan(8, 32, 8, 8, [(8, 12), (16, 24), (24, 32)]),  # positions 12..15 lie in a gap: no rows
        plan(8, 32, 8, 8, [(8, 16), (12, 24), (20, 32)]),  # overlaps: a position goes to the first span ending above it
        ListPlan(start=8, end=32, write_start=8, write_end=16, spans=[(8, 12), (16, 32)], forced=[True, False],
                 positions=[9, 10, 13, 16, 17, 20, 31]),
    ]
    check(reqs, plans)


class SlidingRequest:
    """A request class with only per-position ``key_hi`` / ``key_lo`` (no vectorized bounds)."""

    def __init__(self, req_id, prompt_len, canvas_len, pages):
        _fill(self, req_id, range(30, 30 + prompt_len), canvas_len, pages)

    @property
    def num_prompt_tokens(self):
        return len(self.prompt_token_ids)

    def key_hi(self, p):
        return p + 1

    def key_lo(self, p):
        return max(0, p - 3)


class OddBlockRequest(BlockRequest):
    """Overrides ``key_hi`` only: pack_batch must not use the inherited vectorized bounds."""

    def key_hi(self, p):
        return p + 2


def test_per_position_key_methods_are_honoured():
    reqs = [SlidingRequest(0, 6, 16, [2, 3]), SlidingRequest(1, 9, 16, [4, 5])]
    batch = check(reqs, [plan(0, 16, 0, 8, [(8, 16)]), plan(8, 16, 8, 8, [(8, 16)])])
    assert batch.meta.key_lo[:6].tolist() == [0, 0, 0, 0, 1, 2]
    odd = [block_req(0, 5, 16, [1, 2], cls=OddBlockRequest)]
    batch = check(odd, [plan(0, 16, 0, 8, [(8, 16)])])
    assert batch.meta.key_hi.tolist() == [p + 2 for p in range(16)]


def test_vanilla_and_diffusion_gemma_bounds():
    vanilla = [_fill(VanillaRequest.__new__(VanillaRequest), i, range(20, 20 + p), p + 12, []) for i, p in
               enumerate((3, 7))]
    check(vanilla, [StepPlan(start=0, end=len(r.canvas), write_start=0, write_end=0, spans=[(r.num_prompt_tokens,
                    len(r.canvas))], forced=[False], quota=[4], blocks=[0]) for r in vanilla])
    gemma = []
    for i, (p, cached) in enumerate(((5, 0), (11, 8))):
        req = _fill(DiffusionGemmaRequest.__new__(DiffusionGemmaRequest), i, range(40, 40 + p), p + 8,
                    [3 * i, 3 * i + 1, 3 * i + 2])
        req.cstart, req.sc_probs = p, None
        req.plan_ = StepPlan(start=cached, end=p + 8, write_start=cached, write_end=p, spans=[(p, p + 8)],
                             forced=[False], quota=[-1], blocks=[p // 8])
        gemma.append(req)
    batch = check(gemma, [r.plan_ for r in gemma])
    assert batch.extras["canvas_mask"].sum().item() == 16


def test_a_write_outside_the_page_table_raises():
    with pytest.raises(IndexError, match="outside"):
        check([block_req(0, 5, 16, [1])], [plan(0, 16, 0, 16, [(8, 16)])])


def test_random_block_plans():
    rng = random.Random(0)
    for trial in range(60):
        page_size = rng.choice([4, 8, 16])
        reqs, plans = [], []
        for r in range(rng.randint(1, 5)):
            block = 8
            prompt = rng.randint(1, 30)
            first = prompt // block
            nblocks = rng.randint(1, 3)
            end = (first + nblocks) * block
            shift = rng.random() < 0.5
            cached = rng.choice([0, rng.randrange(0, first * block + 1, block)]) if first else 0
            write_end = rng.choice([cached, first * block])
            write_end = max(write_end, cached)
            start = cached - 1 if shift and cached > 0 else cached
            pages = rng.sample(range(100), -(-max(write_end, 1) // page_size) + rng.randint(0, 2))
            req = block_req(r, prompt, end, pages, prefix_full=rng.random() < 0.3)
            spans = [((first + i) * block, (first + i + 1) * block) for i in range(nblocks)]
            reqs.append(req)
            plans.append(plan(start, end, cached, write_end, spans, shift=shift, blocks=list(range(first, first +
                              nblocks)), quota=[rng.choice([-1, 1, 3]) for _ in spans]))
        check(reqs, plans, page_size)


def test_rows_on_cpu_is_the_batch_itself():
    batch = check([block_req(0, 5, 16, [1, 2])], [plan(0, 16, 0, 8, [(8, 16)])])
    assert rows_on(batch, torch.device("cpu")) is batch


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_rows_on_cuda_moves_every_row_and_block_tensor():
    batch = check([block_req(0, 5, 24, [1, 2, 3])], [plan(0, 24, 0, 8, [(8, 16), (16, 24)], force_all=[True, False])])
    moved = rows_on(batch, torch.device("cuda"))
    for f in ("row_request", "row_position", "row_token", "row_block", "row_prompt_len", "row_prev_token",
              "block_forced", "block_quota", "block_request", "block_id", "block_force_all"):
        got = getattr(moved, f)
        assert got.is_cuda and got.dtype == getattr(batch, f).dtype and torch.equal(got.cpu(), getattr(batch, f)), f


# ------------------------------------------------------------------------------ real engines
ENGINES = {
    "multi_bd-K3": ("llada2", dict(decoding_strategy="multi_bd", buffer_size=3, accept_threshold=0.005)),
    "d2f-K2": ("llada2", dict(decoding_strategy="d2f", buffer_size=2, accept_threshold=0.005)),
    "dream-shift": ("dream", dict(decoding_strategy="multi_bd", buffer_size=2, page_size=4,
                                  enable_prefix_caching=True)),
    "fast_dllm_v2-dual": ("fast_dllm_v2", dict(decoding_strategy="fast_dllm_v2", buffer_size=2,
                                               use_dual_cache=True)),
    "vanilla": ("llada2", dict(decoding_strategy="vanilla", steps_per_block=4)),
    "diffusion_gemma": ("diffusion_gemma", dict(max_model_len=512, block_size=None)),  # its canvas
}


@pytest.mark.parametrize("name", list(ENGINES))
def test_engine_batches_equal_the_reference(tiny_path, monkeypatch, name):
    import diffulex.engine.engine as engine_mod
    from diffulex import Diffulex, SamplingParams

    family, kw = ENGINES[name]
    kw = {k: v for k, v in {"block_size": 8, "page_size": 8, "dtype": "float32", **kw}.items() if v is not None}
    seen = []

    def spy(reqs, plans, page_size, kv):
        batch = pack_batch(reqs, plans, page_size, kv)
        assert_same(batch, reference_pack(reqs, plans, kv.page_size), page_size)
        seen.append(len(reqs))
        return batch

    monkeypatch.setattr(engine_mod, "pack_batch", spy)
    prompts = [[(5 * i + 3 * j) % 200 + 20 for i in range(n)] for j, n in enumerate((5, 8, 13))]
    with Diffulex(tiny_path(family), **kw) as llm:
        llm.generate(prompts, SamplingParams(max_tokens=16))
        llm.generate(prompts[:2], SamplingParams(max_tokens=16))  # prefix-cache hits where enabled
    assert seen and max(seen) == 3
