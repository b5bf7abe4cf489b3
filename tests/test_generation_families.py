"""Generation on every block-diffusion family: engine == the independent reference decoder.

Covers the shift families (Dream, Fast-dLLM v2: the prediction for position p is the
output at p - 1, so the engine re-feeds the last cached token) next to no-shift ones.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

from reference_decoder import attention_mask, choose, reference_decode  # noqa: E402
from test_model_families import dims, reference_logits, tiny  # noqa: E402

from diffulex import Diffulex, SamplingParams  # noqa: E402
from diffulex.config.families import FAMILIES  # noqa: E402

B, G = 8, 20
PROMPTS = [[(5 * i + 3 * j) % 200 + 20 for i in range(n)] for j, n in enumerate((5, 8, 13))]


def _logits_fn(family):
    path, cfg, w = tiny(family)
    dm = dims(family, cfg)
    shift = FAMILIES[family].shift

    def fn(ids, mask):
        with torch.no_grad():
            logits = reference_logits(w, dm, ids, mask)
        return torch.cat([logits[:1], logits[:-1]]) if shift else logits  # row p <- output at p - 1

    return str(path), fn


def _threshold(fn, facts, strategy):
    """A threshold inside the flat tiny-model confidence range, so steps accept 1 or several tokens."""
    prompt = PROMPTS[1]
    ids = torch.tensor(prompt + [facts["mask_id"]] * B)
    logits = fn(ids, attention_mask(len(ids), len(prompt), B, strategy))
    _, conf = choose(logits[len(prompt):], facts["mask_id"], facts["vocab_limit"])
    return float(conf.quantile(0.7))


@pytest.mark.parametrize("family, strategy, buffer", [
    ("dream", "d2f", 4), ("dream", "multi_bd", 1), ("fast_dllm_v2", "multi_bd", 2),
    ("llada", "d2f", 2), ("sdar", "multi_bd", 1), ("sdar_moe", "multi_bd", 4),
])
def test_engine_equals_reference_decoder(tiny_root, family, strategy, buffer):
    path, fn = _logits_fn(family)
    kw = dict(decoding_strategy=strategy, block_size=B, page_size=B, buffer_size=buffer, dtype="float32",
              add_block_threshold=0.25, semi_complete_threshold=0.5)
    with Diffulex(path, **kw) as probe:
        facts = dict(mask_id=probe.config.model.mask_token_id, eos_ids=tuple(probe.config.eos_token_ids),
                     vocab_limit=probe.config.tokenizer_vocab_size)
    tau = _threshold(fn, facts, strategy)
    with Diffulex(path, accept_threshold=tau, **kw) as llm:
        out = llm.generate(PROMPTS, SamplingParams(max_tokens=G))
    multi = 0
    for prompt, traj in zip(PROMPTS, out):
        ref = reference_decode(fn, prompt, max_tokens=G, block_size=B, strategy=strategy, buffer_size=buffer,
                               accept_threshold=tau, add_block_threshold=0.25, semi_complete_threshold=0.5, **facts)
        assert traj.token_ids == ref.token_ids, (family, len(prompt), traj.token_ids, ref.token_ids)
        assert traj.finish_reason == ref.finish_reason and traj.nfe == ref.nfe
        multi += sum(s.num_decided >= 2 for s in traj.steps)
    assert multi > 0, "the threshold path (several tokens in one step) was not exercised"
