"""``fast_dllm_v2``: hierarchical block / sub-block decoding with the dual cache.

Pinned here against references written in this file from the dense model of
``test_model_families`` (no engine code):

* ``use_dual_cache=False`` equals a full-recompute decoder: every step one dense forward
  of ``[0, block end)`` under an explicit block-causal mask, shifted logits, the current
  sub-block's masks above the threshold (at least the best one), the first position of a
  block after the prompt seeded by its argmax;
* ``use_dual_cache=True`` equals a decoder that keeps per-layer K/V tensors: a full pass
  at each block's start (== the recompute, checked), then each step recomputes only the
  current sub-block (and the position before it) against the stale K/V of the rest;
* batched == alone (requests in different phases share forwards), deterministic, and
  buffer_size=1 stays a config error.
"""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

from reference_decoder import choose  # noqa: E402
from test_generation_families import PROMPTS, _logits_fn, _threshold  # noqa: E402
from test_model_families import dims, lin, reference_logits, rms, rope, swiglu, tiny  # noqa: E402

from diffulex import Diffulex, SamplingParams  # noqa: E402
from diffulex.sampling.fast_dllm_v2 import accept_with_seed  # noqa: E402
from diffulex.engine.model_runner import ModelRunner  # noqa: E402

B, BUF, G = 8, 2, 20
S = B // BUF  # sub-block size


# ----------------------------------------------------------------------------- references

def block_mask(n: int) -> torch.Tensor:
    i = torch.arange(n)
    return i[None, :] < (i[:, None] // B + 1) * B


def cached_forward(w, dm, ids, qpos, cache, write_from, ctx):
    """Outputs at ``qpos`` (list of positions) of the dense model with per-layer K/V tensors.

    Per layer: the K/V of the query positions >= ``write_from`` replace the cached ones
    first, then every query attends the cached keys ``[0, ctx)`` block-causally.
    ``cache``: list of [K, V] per layer, each [L, Hkv, D] (filled in place).
    """
    n, eps, d, hq, hkv = dm["names"], dm["eps"], dm["d"], dm["hq"], dm["hkv"]
    pos = torch.tensor(qpos)
    h = w[n["embed"]][ids[pos]]
    write = pos >= write_from
    key_pos = torch.arange(ctx)
    visible = key_pos[None, :] < (pos[:, None] // B + 1) * B  # [Q, ctx]
    for i in range(dm["layers"]):
        p = n["layer"].format(i=i)
        x = rms(h, w[f"{p}.{n['norm1']}.weight"], eps)
        q, k, v = (lin(x, w, f"{p}.{n[c]}").view(len(qpos), -1, d) for c in "qkv")
        q, k = rope(q, pos, dm["theta"]), rope(k, pos, dm["theta"])
        cache[i][0][pos[write]] = k[write]
        cache[i][1][pos[write]] = v[write]
        ks = cache[i][0][:ctx].repeat_interleave(hq // hkv, 1)
        vs = cache[i][1][:ctx].repeat_interleave(hq // hkv, 1)
        att = (torch.einsum("qhd,khd->hqk", q, ks) / math.sqrt(d)).masked_fill(~visible, float("-inf")).softmax(-1)
        h = h + lin(torch.einsum("hqk,khd->qhd", att, vs).reshape(len(qpos), -1), w, f"{p}.{n['o']}")
        x = rms(h, w[f"{p}.{n['norm2']}.weight"], eps)
        h = h + swiglu(x, w, *(f"{p}.{m}" for m in n["mlp"]))
    return torch.nn.functional.linear(rms(h, w[n["norm"]], eps), w[n["head"]]).float()


def reference_fdv2(w, dm, prompt, *, tau, dual, mask_id, vocab_limit, eos_ids, first_steps=None):
    """Greedy Fast-dLLM v2 loop; returns (tokens, finish reason, nfe)."""
    P = len(prompt)
    canvas = list(prompt)
    b, nfe, cached, cache = P // B, 0, False, None
    canvas += [mask_id] * ((b + 1) * B - len(canvas))
    while True:
        lo, hi = b * B, (b + 1) * B
        sub_lo = next(a for a in range(lo, hi, S) if mask_id in canvas[a:a + S])
        ids = torch.tensor(canvas)
        refine = dual and cached
        with torch.no_grad():
            if refine:  # only the sub-block (and the position before it) against the cache
                qpos = list(range(max(sub_lo - 1, 0), sub_lo + S))
                out = dict(zip(qpos, cached_forward(w, dm, ids, qpos, cache, lo, hi)))
            else:  # full pass: the whole canvas up to the block end recomputed, block-causal
                full = reference_logits(w, dm, ids[:hi], block_mask(hi))
                if dual:
                    cache = [[torch.zeros(hi + B, dm["hkv"], dm["d"]) for _ in range(2)] for _ in range(dm["layers"])]
                    again = cached_forward(w, dm, ids, list(range(hi)), cache, 0, hi)
                    torch.testing.assert_close(again, full, atol=1e-4, rtol=1e-4)
                    if first_steps is not None:
                        first_steps.append((lo, full[sub_lo - 1:sub_lo + S - 1]))
                out = dict(enumerate(full))
                cached = True
        nfe += 1
        rows = [p for p in range(sub_lo, sub_lo + S) if p >= 1]
        tok, conf = choose(torch.stack([out[p - 1] for p in rows]), mask_id, vocab_limit)
        tok, conf = dict(zip(rows, tok.tolist())), dict(zip(rows, conf.tolist()))
        masked = [p for p in rows if canvas[p] == mask_id]
        take = [p for p in masked if conf[p] > tau]
        if not refine and lo >= P and canvas[lo] == mask_id:
            take = sorted(set(take) | {lo})  # the AR seed of a block after the prompt
        elif not take:
            best = max(conf[p] for p in masked)
            take = [min(p for p in masked if conf[p] == best)]
        for p in take:
            canvas[p] = tok[p]
        if mask_id not in canvas[lo:hi]:
            gen = canvas[P:min(hi, P + G)]
            hit = [i for i, t in enumerate(gen) if t in eos_ids]
            if hit:
                return gen[:hit[0] + 1], "eos", nfe
            if hi >= P + G:
                return gen, "length", nfe
            b, cached = b + 1, False
            canvas += [mask_id] * B


# ----------------------------------------------------------------------------- decisions

def test_accept_rule_threshold_best_and_seed():
    conf = torch.tensor([0.2, 0.95, 0.3, 0.1, 0.4, 0.5, 0.97, 0.2])
    is_mask = torch.tensor([True, True, True, False, True, True, False, True])
    block = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    forced, tau = torch.tensor([True, True]), torch.tensor([0.9, 0.9])
    none = torch.zeros(8, dtype=torch.bool)
    # block 0: the one above 0.9; block 1: nothing above (0.97 is decided) -> its best mask
    assert accept_with_seed(conf, is_mask, block, forced, tau, none).tolist() == \
        [False, True, False, False, False, True, False, False]
    # a seed row is taken whatever its confidence and replaces the forced pick
    seed = torch.tensor([False, False, False, False, False, False, False, True])
    assert accept_with_seed(conf, is_mask, block, forced, tau, seed).tolist() == \
        [False, True, False, False, False, False, False, True]
    # a seed on a decided position takes nothing
    seed = torch.tensor([False, False, False, False, False, False, True, False])
    assert accept_with_seed(conf, is_mask, block, forced, tau, seed).tolist() == \
        [False, True, False, False, False, True, False, False]


def test_buffer_size_one_is_a_config_error(tiny_path):
    with pytest.raises(ValueError, match="buffer_size"):
        Diffulex(tiny_path("fast_dllm_v2"), decoding_strategy="fast_dllm_v2", block_size=B, buffer_size=1)


# ----------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def setup(tiny_root):
    path, fn = _logits_fn("fast_dllm_v2")
    _, cfg, w = tiny("fast_dllm_v2")
    kw = dict(decoding_strategy="fast_dllm_v2", block_size=B, page_size=B, buffer_size=BUF, dtype="float32")
    with Diffulex(path, **kw) as probe:
        facts = dict(mask_id=probe.config.model.mask_token_id, eos_ids=set(probe.config.eos_token_ids),
                     vocab_limit=probe.config.tokenizer_vocab_size)
    tau = _threshold(fn, facts, "multi_bd")
    return path, w, dims("fast_dllm_v2", cfg), facts, dict(kw, accept_threshold=tau)


@pytest.mark.parametrize("dual", [False, True])
def test_engine_equals_reference(setup, dual, monkeypatch):
    path, w, dm, facts, kw = setup
    modes = []
    run = ModelRunner.run

    def spy(self, input_ids, positions, meta, extras=None):
        cache_only = meta.cache_only.tolist()
        modes.append(cache_only)
        # A cache-only sequence reads its whole block from the cache: past its fed tokens, to a block end.
        for c, co, lo in zip(meta.context_lens.tolist(), cache_only, meta.cu_seqlens_q[:-1].tolist()):
            if co:
                assert c % B == 0 and c > int(meta.positions[lo])
        return run(self, input_ids, positions, meta, extras)

    monkeypatch.setattr(ModelRunner, "run", spy)
    with Diffulex(path, use_dual_cache=dual, **kw) as llm:
        batched = llm.generate(PROMPTS, SamplingParams(max_tokens=G))
        again = llm.generate(PROMPTS, SamplingParams(max_tokens=G))
        alone = [llm.generate([p], SamplingParams(max_tokens=G))[0] for p in PROMPTS]
    multi = 0
    for prompt, t, t2, t1 in zip(PROMPTS, batched, again, alone):
        tokens, reason, nfe = reference_fdv2(w, dm, prompt, tau=kw["accept_threshold"], dual=dual, **facts)
        assert t.token_ids == tokens, (len(prompt), t.token_ids, tokens)
        assert t.finish_reason == reason and t.nfe == nfe
        assert t2.token_ids == t.token_ids and t1.token_ids == t.token_ids and t1.nfe == t.nfe
        multi += sum(s.num_decided >= 2 for s in t.steps)
    assert multi > 0, "the threshold path (several tokens in one step) was not exercised"
    if dual:  # requests in different phases shared forwards
        assert any(any(m) and not all(m) for m in modes)
    else:
        assert not any(any(m) for m in modes)


def test_dual_cache_first_step_of_each_block_equals_recompute(setup, monkeypatch):
    """The full pass of each block gives the recompute's logits for the first sub-block, and
    the dual cache does change the outputs (the references of both modes differ)."""
    path, w, dm, facts, kw = setup
    tau = kw["accept_threshold"]
    first = []
    reference_fdv2(w, dm, PROMPTS[2], tau=tau, dual=True, first_steps=first, **facts)
    seen = {}
    run = ModelRunner.run

    def spy(self, input_ids, positions, meta, extras=None):
        logits = run(self, input_ids, positions, meta, extras)
        if not bool(meta.cache_only.any()):
            seen.setdefault(int(positions[-1]) // B * B, logits.clone())  # keyed by block start
        return logits

    monkeypatch.setattr(ModelRunner, "run", spy)
    with Diffulex(path, use_dual_cache=True, **kw) as llm:
        llm.generate([PROMPTS[2]], SamplingParams(max_tokens=G))
    assert len(first) >= 3 and sorted(seen) == [lo for lo, _ in first]
    for lo, ref in first:
        got = seen[lo]
        torch.testing.assert_close(got, ref[-got.shape[0]:], atol=1e-4, rtol=1e-4)
    assert any(reference_fdv2(w, dm, p, tau=tau, dual=True, **facts)
               != reference_fdv2(w, dm, p, tau=tau, dual=False, **facts) for p in PROMPTS)
