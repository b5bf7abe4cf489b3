"""generate() equals an independent full-recompute reference decoder, token for token (CPU, fp32).

The reference (``tests/reference_decoder.py``) recomputes the whole canvas every step with an
explicit boolean mask through a dense model built from the raw weights; no engine code is used
except the safetensors reader. The tiny model's distributions are flat (confidences ≈ 0.0045 –
0.0055 over 320 ids), so τ = 0.005 sits mid-distribution: some steps accept one token, others
several — the tests assert both happen.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from reference_decoder import (check_fast_moe, load_dense_model, make_logits_fn, official_llada2_generate,
                               reference_decode)

B = 8
TAU = 0.005
G = 30  # P + G ends mid-block for most prompts: the "length" cut inside the last block is exercised
PROMPT_LENS = (5, 8, 13, 16, 21)  # mid-block, exact block multiples (8, 16), several blocks of prompt
CONFIGS = {  # id -> (strategy, buffer_size, add_block_threshold, semi_complete_threshold)
    "multi_bd-K1": ("multi_bd", 1, 0.25, 0.5),
    "multi_bd-K4": ("multi_bd", 4, 0.25, 0.5),
    "d2f-K4": ("d2f", 4, 0.25, 0.5),
}
EOS_LIKE = 87  # the eos-prone checkpoint makes EOS win wherever this token would


def _prompts(lens=PROMPT_LENS, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 270, (n,), generator=g).tolist() for n in lens]


@pytest.fixture(scope="module")
def ckpt(tiny_path):
    return tiny_path("llada2")


@pytest.fixture(scope="module")
def eos_ckpt(ckpt, tmp_path_factory):
    """The tiny checkpoint with lm_head row EOS(1) = 1.05 × row EOS_LIKE, so EOS is actually generated."""
    dst = tmp_path_factory.mktemp("llada2_eos") / "llada2"
    shutil.copytree(ckpt, dst)
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    shard = dst / index["weight_map"]["lm_head.weight"]
    tensors = load_file(str(shard))
    head = tensors["lm_head.weight"].clone()
    head[1] = head[EOS_LIKE] * 1.05
    tensors["lm_head.weight"] = head
    save_file(tensors, str(shard), metadata={"format": "pt"})
    return str(dst)


@pytest.fixture(scope="module")
def dense(ckpt):
    w, cfg = load_dense_model(ckpt)
    return w, cfg, make_logits_fn(w, cfg)


@pytest.fixture(scope="module")
def facts(ckpt):
    from diffulex.config import Config

    c = Config(ckpt, decoding_strategy="multi_bd", block_size=B, dtype="float32")
    return dict(mask_id=c.model.mask_token_id, eos_ids=tuple(c.eos_token_ids), vocab_limit=c.tokenizer_vocab_size)


def _ref(logits_fn, facts, prompt, strategy="multi_bd", K=1, a=0.25, s=0.5, tau=TAU, max_tokens=G):
    return reference_decode(logits_fn, prompt, max_tokens=max_tokens, block_size=B, strategy=strategy, buffer_size=K,
                            accept_threshold=tau, add_block_threshold=a, semi_complete_threshold=s, **facts)


def _engine(path, strategy="multi_bd", K=1, a=0.25, s=0.5, tau=TAU, **kw):
    from diffulex import Diffulex

    kw.setdefault("page_size", B)
    return Diffulex(path, decoding_strategy=strategy, block_size=B, buffer_size=K, accept_threshold=tau,
                    add_block_threshold=a, semi_complete_threshold=s, dtype="float32", **kw)


def _sp(max_tokens=G):
    from diffulex import SamplingParams

    return SamplingParams(temperature=0.0, max_tokens=max_tokens)


def _explain(prompt, traj, ref):
    first = next((i for i, (x, y) in enumerate(zip(traj.token_ids, ref.token_ids)) if x != y),
                 min(len(traj.token_ids), len(ref.token_ids)))
    return (f"P={len(prompt)}: first difference at generated index {first} (absolute position "
            f"{len(prompt) + first}, block {(len(prompt) + first) // B})\n engine {traj.token_ids} "
            f"({traj.finish_reason}, nfe {traj.nfe})\n ref    {ref.token_ids} ({ref.finish_reason}, nfe {ref.nfe})")


# ----------------------------------------------------------------------------- (a) the reference itself

def test_fast_moe_matches_per_token_reference(dense):
    w, cfg, _ = dense
    check_fast_moe(w, cfg)


@pytest.mark.parametrize("plen", [13, 16])
def test_reference_k1_equals_official_llada2_loop(dense, facts, plen):
    _, _, fn = dense
    prompt = _prompts((plen,), seed=1)[0]
    ref = _ref(fn, facts, prompt, K=1)
    out, nfe = official_llada2_generate(fn, prompt, gen_length=G, block_length=B, threshold=TAU,
                                        mask_id=facts["mask_id"], eos_id=facts["eos_ids"][0],
                                        vocab_limit=facts["vocab_limit"])
    assert ref.token_ids == out
    assert ref.nfe == nfe
    assert ref.finish_reason == ("eos" if facts["eos_ids"][0] in out else "length")


def test_reference_k1_equals_official_loop_with_eos(eos_ckpt, facts):
    w, cfg = load_dense_model(eos_ckpt)
    fn = make_logits_fn(w, cfg)
    hits = 0
    for prompt in _prompts(seed=0):
        ref = _ref(fn, facts, prompt, K=1)
        out, nfe = official_llada2_generate(fn, prompt, gen_length=G, block_length=B, threshold=TAU,
                                            mask_id=facts["mask_id"], eos_id=1, vocab_limit=facts["vocab_limit"])
        assert (ref.token_ids, ref.nfe) == (out, nfe)
        hits += ref.finish_reason == "eos"
    assert hits >= 1, "the eos-prone checkpoint should stop on EOS for at least one prompt"


# ----------------------------------------------------------------------------- (b) + (c) engine == reference

@pytest.mark.parametrize("name", list(CONFIGS))
def test_engine_equals_reference(ckpt, dense, facts, name):
    strategy, K, a, s = CONFIGS[name]
    _, _, fn = dense
    prompts = _prompts()
    refs = [_ref(fn, facts, p, strategy, K, a, s) for p in prompts]
    # the threshold path is exercised: some step accepts several tokens, some exactly one
    assert any(r.nfe < len(r.token_ids) for r in refs)
    assert any(st.n_accepted >= 2 for r in refs for st in r.steps)
    assert any(st.n_accepted == 1 for r in refs for st in r.steps)
    llm = _engine(ckpt, strategy, K, a, s)
    try:
        assert llm.config.model.mask_token_id == facts["mask_id"]
        batch = llm.generate(prompts, _sp()).trajectories
        for p, t, r in zip(prompts, batch, refs):
            assert (t.token_ids, t.finish_reason) == (r.token_ids, r.finish_reason), _explain(p, t, r)
            # the engine fuses prefill / commits into its forwards: its NFE is the reference's
            assert t.nfe == r.nfe, _explain(p, t, r)
        # (c) batch invariance: each prompt alone gives the same tokens
        for p, t in zip(prompts, batch):
            alone = llm.generate([p], _sp()).trajectories[0]
            assert (alone.token_ids, alone.finish_reason, alone.nfe) == (t.token_ids, t.finish_reason, t.nfe)
    finally:
        llm.exit()


@pytest.mark.parametrize("name", ["multi_bd-K1", "multi_bd-K4", "d2f-K4"])
def test_engine_equals_reference_with_eos(eos_ckpt, facts, name):
    """EOS mid-block: the rest of the block is decoded but not returned; later blocks are not decoded."""
    strategy, K, a, s = CONFIGS[name]
    w, cfg = load_dense_model(eos_ckpt)
    fn = make_logits_fn(w, cfg)
    prompts = _prompts(seed=0)
    refs = [_ref(fn, facts, p, strategy, K, a, s, max_tokens=40) for p in prompts]
    assert any(r.finish_reason == "eos" for r in refs)
    llm = _engine(eos_ckpt, strategy, K, a, s)
    try:
        for p, t, r in zip(prompts, llm.generate(prompts, _sp(40)).trajectories, refs):
            assert (t.token_ids, t.finish_reason, t.nfe) == (r.token_ids, r.finish_reason, r.nfe), _explain(p, t, r)
    finally:
        llm.exit()


# ----------------------------------------------------------------------------- (d) prefix cache, preemption

def test_prefix_caching_on_off_identical(ckpt, dense, facts):
    _, _, fn = dense
    shared = _prompts((24,), seed=7)[0]
    a, b = shared + [11, 12, 13], shared + [21, 22, 23, 24, 25, 26]
    refs = [_ref(fn, facts, p) for p in (a, b)]
    results = {}
    for on in (True, False):
        llm = _engine(ckpt, enable_prefix_caching=on)
        try:
            first = llm.generate([a], _sp()).trajectories[0]  # populates the prefix cache
            second = llm.generate([b], _sp()).trajectories[0]  # reuses the shared prefix pages
            both = llm.generate([a, b], _sp()).trajectories
            results[on] = [first.token_ids, second.token_ids, both[0].token_ids, both[1].token_ids]
        finally:
            llm.exit()
    assert results[True] == results[False]
    assert results[True] == [refs[0].token_ids, refs[1].token_ids] * 2


@pytest.mark.parametrize("name", ["multi_bd-K1", "multi_bd-K4"])
def test_preemption_identical(ckpt, dense, facts, name):
    strategy, K, a, s = CONFIGS[name]
    _, _, fn = dense
    prompts = _prompts()
    refs = [_ref(fn, facts, p, strategy, K, a, s) for p in prompts]
    need = max(-(-((len(p) + G + B - 1) // B * B) // B) for p in prompts)  # pages of the longest canvas
    llm = _engine(ckpt, strategy, K, a, s, num_pages=need + 1, enable_prefix_caching=False)
    preempted = []
    orig = llm.scheduler.preempt
    llm.scheduler.preempt = lambda req: (preempted.append(req), orig(req))[1]
    try:
        out = llm.generate(prompts, _sp()).trajectories
        for p, t, r in zip(prompts, out, refs):
            assert (t.token_ids, t.finish_reason) == (r.token_ids, r.finish_reason), _explain(p, t, r)
    finally:
        llm.exit()
    assert preempted, "num_pages was meant to force preemption"


# ----------------------------------------------------------------------------- (e) bad input

def test_bad_input_then_still_correct(ckpt, dense, facts):
    from diffulex import SamplingParams

    _, _, fn = dense
    prompt = _prompts((13,), seed=3)[0]
    ref = _ref(fn, facts, prompt)
    llm = _engine(ckpt)
    try:
        def still_ok():
            t = llm.generate([prompt], _sp()).trajectories[0]
            assert (t.token_ids, t.finish_reason) == (ref.token_ids, ref.finish_reason)

        with pytest.raises(ValueError):
            llm.generate([], _sp())
        still_ok()
        too_long = [5] * (llm.config.max_model_len + 1)
        with pytest.raises(ValueError):
            llm.generate([too_long], _sp())
        still_ok()
        with pytest.raises(ValueError):
            llm.generate([prompt, too_long], _sp())  # one bad prompt among good ones: nothing left behind
        still_ok()
        with pytest.raises(ValueError):
            SamplingParams(temperature=-1)
        still_ok()
    finally:
        llm.exit()


# ----------------------------------------------------------------------------- (d) generations shorter than a block

@pytest.mark.parametrize("block, gen", [(8, 5), (8, 3), (32, 20)])
def test_short_generation_follows_the_official_llada2_step_counts(ckpt, dense, facts, block, gen):
    """gen < block: the official loop runs `gen` steps per block with block // gen (+1) tokens each."""
    from diffulex import Diffulex

    _, _, fn = dense
    with Diffulex(ckpt, decoding_strategy="multi_bd", block_size=block, page_size=block, buffer_size=1,
                  accept_threshold=TAU, dtype="float32") as llm:
        for prompt in _prompts((5, 13, 16), seed=4):
            traj = llm.generate([prompt], _sp(gen)).trajectories[0]
            out, nfe = official_llada2_generate(fn, prompt, gen_length=gen, block_length=block, threshold=TAU,
                                                mask_id=facts["mask_id"], eos_id=facts["eos_ids"][0],
                                                vocab_limit=facts["vocab_limit"])
            assert (traj.token_ids, traj.nfe) == (out, nfe), (len(prompt), traj.token_ids, out, traj.nfe, nfe)
    # The official counts: block 32, gen 20 forces 2 tokens in each of the first 12 steps.
    from diffulex.strategy.pipelined import official_fill_schedule
    from diffulex.config import Config

    cfg = Config(ckpt, decoding_strategy="multi_bd", block_size=32, dtype="float32")
    assert official_fill_schedule(cfg, 20) == [2] * 12 + [1] * 8 and official_fill_schedule(cfg, 32) == []
