"""The vanilla LLaDA loop: schedules, quota decision, and the engine against a literal transcription."""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

from reference_decoder import choose, load_dense_model, make_logits_fn  # noqa: E402

from diffulex import Diffulex, SamplingParams  # noqa: E402
from diffulex.sampling.quota import top_quota  # noqa: E402
from diffulex.strategy.vanilla import dream_schedule, even_schedule  # noqa: E402


def test_even_schedule_gives_the_remainder_to_the_first_steps():
    assert even_schedule(8, 4) == [2, 2, 2, 2]
    assert even_schedule(7, 3) == [3, 2, 2]
    assert even_schedule(2, 4) == [1, 1, 0, 0]


def test_dream_schedule_matches_the_official_counts():
    # official-loops.md: 32 tokens / 32 steps -> [0, 1, ..., 1, 2]; 32 / 16 -> [1, 2, ..., 2, 3]
    assert dream_schedule(32, 32) == [0] + [1] * 30 + [2]
    assert dream_schedule(32, 16) == [1] + [2] * 14 + [3]
    assert sum(dream_schedule(37, 5)) == 37


def test_top_quota_takes_the_best_eligible_rows_per_block():
    score = torch.tensor([0.1, 0.9, 0.5, 0.7, 0.3, 0.8, 0.2])
    eligible = torch.tensor([True, True, True, False, True, True, True])
    block = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    accept = top_quota(score, eligible, block, torch.tensor([2, 1]))
    assert accept.tolist() == [False, True, True, False, False, True, False]
    assert top_quota(score, eligible, block, torch.tensor([0, 0])).sum() == 0


def official_llada_generate(logits_fn, prompt, gen_length, block_length, steps, mask_id, vocab_limit):
    """LLaDA generate.py (greedy, low_confidence remasking), transcribed: full bidirectional recompute."""
    x = torch.tensor(list(prompt) + [mask_id] * gen_length)
    p = len(prompt)
    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks
    full = torch.ones(len(x), len(x), dtype=torch.bool)
    for b in range(num_blocks):
        lo, hi = p + b * block_length, p + (b + 1) * block_length
        n_masks = int((x[lo:hi] == mask_id).sum())
        base, rem = divmod(n_masks, steps_per_block)
        for i in range(steps_per_block):
            k = base + (1 if i < rem else 0)
            logits = logits_fn(x, full)
            tok, conf = choose(logits, mask_id, vocab_limit)
            conf = torch.where(x == mask_id, conf, torch.full_like(conf, float("-inf")))
            conf[hi:] = float("-inf")
            conf[:lo] = float("-inf")
            if k:
                idx = torch.topk(conf, k).indices
                x[idx] = tok[idx]
    return x[p:].tolist()


@pytest.mark.parametrize("plen", [3, 8])
def test_engine_vanilla_equals_the_official_llada_loop(tiny_path, plen):
    path = tiny_path("llada2")
    w, cfg = load_dense_model(path)
    fn = make_logits_fn(w, cfg)
    prompt = [(7 * i + 11) % 200 + 20 for i in range(plen)]
    with Diffulex(path, decoding_strategy="vanilla", block_size=8, steps_per_block=4, dtype="float32") as llm:
        out = llm.generate([prompt], SamplingParams(max_tokens=16, ignore_eos=True))[0]
        mask_id, vocab = llm.config.model.mask_token_id, llm.config.tokenizer_vocab_size
    ref = official_llada_generate(fn, prompt, 16, 8, 8, mask_id, vocab)
    assert out.token_ids == ref
    assert out.nfe == 8 and [s.num_decided for s in out.steps] == [2] * 8


def test_vanilla_random_remasking_is_seeded_and_fills_every_slot(tiny_path):
    path = tiny_path("llada2")
    kw = dict(decoding_strategy="vanilla", block_size=8, steps_per_block=2, remasking="random")
    with Diffulex(path, **kw) as llm:
        a = llm.generate([[5, 6, 7]], SamplingParams(max_tokens=16, seed=3, ignore_eos=True))[0]
        b = llm.generate([[5, 6, 7]], SamplingParams(max_tokens=16, seed=3, ignore_eos=True))[0]
    assert a.token_ids == b.token_ids and len(a.token_ids) == 16 and a.nfe == 4


def _dream_counts_from_the_official_facts(masks: int, steps: int, eps: float = 1e-3) -> list[int]:
    """Dream's diffusion_generate: float32 linspace timesteps, int(n * (1 - s / t)) in float32 tensors."""
    import torch

    timesteps = torch.linspace(1, eps, steps + 1)
    n = torch.tensor(float(masks))  # mask_index.sum() / batch: a float32 tensor
    out = []
    for i in range(steps):
        t, s = timesteps[i], timesteps[i + 1]
        k = int(n) if i == steps - 1 else int(n * (1 - s / t))
        out.append(k)
        n = n - k
    return out


def test_dream_schedule_is_computed_in_float32_like_the_official_loop():
    from diffulex.strategy.vanilla import dream_schedule

    assert dream_schedule(1000, 3) == [333, 333, 334]  # float64 gave 332 in the first step
    assert dream_schedule(32, 32)[:2] == [0, 1]
    pairs = [(g, s) for g in (590, 965, 1000, 1024) for s in range(1, 129)] + [(g, 37) for g in range(900, 1000)]
    assert all(dream_schedule(g, s) == _dream_counts_from_the_official_facts(g, s) for g, s in pairs)
