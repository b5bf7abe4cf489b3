"""Edit sampling (LLaDA2.1-style): fills, edits, re-masks, penalty and commit rules."""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from diffulex import Diffulex, SamplingParams
from diffulex.sampling.edit import EditSampler

MASK, V = 9, 10


def _config(accept=0.5, edit=0.6, remask=0.0, penalty=0.0):
    return SimpleNamespace(model=SimpleNamespace(mask_token_id=MASK),
                           strategy=SimpleNamespace(accept_threshold=accept),
                           sampling=SimpleNamespace(edit_threshold=edit, remask_threshold=remask,
                                                    penalty_lambda=penalty, confidence="probability"))


def _logits(rows):
    out = torch.full((len(rows), V), -30.0)
    for i, probs in enumerate(rows):  # probs: {token: p}; the rest share what is left
        rest = (1 - sum(probs.values())) / (V - 1 - len(probs))
        for t in range(V):
            if t != MASK:
                out[i, t] = math.log(probs.get(t, rest))
    return out


def _decide(current, rows, forced=True, force_all=False, prev=None, **kw):
    m = len(current)
    batch = SimpleNamespace(block_forced=torch.tensor([forced]), row_block=torch.zeros(m, dtype=torch.long),
                            row_position=torch.arange(2, 2 + m), row_token=torch.tensor(current),
                            row_prompt_len=torch.full((m,), 2), row_request=torch.zeros(m, dtype=torch.long),
                            block_force_all=torch.tensor([force_all]), block_id=torch.tensor([3]),
                            block_request=torch.tensor([0]),
                            row_prev_token=torch.tensor(prev if prev is not None else [-1] * m))
    req = SimpleNamespace(sampling_params=SamplingParams(), generator=None)
    forbidden = torch.zeros(V, dtype=torch.bool)
    forbidden[MASK] = True
    return EditSampler(_config(**kw)).decide(batch, _logits(rows), [req], forbidden)[0]


def test_fills_edits_and_untouched_positions():
    d = _decide([MASK, MASK, 1, 2], [{4: 0.7}, {5: 0.3}, {6: 0.8}, {7: 0.55}])
    assert [(p, t) for p, t, _ in d.fills] == [(2, 4)]  # 0.3 is below accept
    assert [(p, old, new) for p, old, new, _ in d.edits] == [(4, 1, 6)]  # 0.55 is below edit threshold
    assert d.remasks == [] and d.state["refining"] == []  # masks left: stays in flight, not "refining"
    assert d.state["stability"][3] == 0.5  # one of two decided tokens changed


def test_forced_block_takes_its_best_mask_and_unforced_may_take_none():
    rows = [{4: 0.3}, {5: 0.4}]
    assert [p for p, _, _ in _decide([MASK, MASK], rows).fills] == [3]
    assert _decide([MASK, MASK], rows, forced=False).fills == []


def test_remask_low_probability_tokens_when_enabled():
    rows = [{1: 0.05, 4: 0.2}, {2: 0.9}]
    assert _decide([1, 2], rows).remasks == []
    d = _decide([1, 2], rows, remask=0.1)
    assert d.remasks == [2] and d.state["refining"] == []  # a mask again: the block is not done


def test_block_without_masks_stays_open_while_it_changes_and_commits_when_stable():
    assert _decide([1, 2], [{6: 0.9}, {2: 0.9}]).state["refining"] == [3]
    assert _decide([1, 2], [{1: 0.9}, {2: 0.9}]).state["refining"] == []
    d = _decide([1, MASK], [{6: 0.9}, {2: 0.1}], force_all=True)  # out of steps: fill all, commit
    assert [p for p, _, _ in d.fills] == [3] and d.state["refining"] == []


def test_penalty_discourages_repeating_the_previous_token():
    rows = [{4: 0.5, 5: 0.45}]
    assert _decide([MASK], rows, prev=[4]).fills[0][1] == 4
    assert _decide([MASK], rows, prev=[4], penalty=1.0).fills[0][1] == 5


def test_edit_mode_end_to_end_records_edits_and_batches_consistently(tiny_path):
    kw = dict(sampling_mode="edit", block_size=8, page_size=8, accept_threshold=0.005, edit_threshold=0.004,
              max_post_edit_steps=4, buffer_size=2, dtype="float32")
    prompts = [[5, 6, 7], [9] * 11]
    with Diffulex(tiny_path("llada2"), **kw) as llm:
        batched = llm.generate(prompts, SamplingParams(max_tokens=16))
        alone = [llm.generate([p], SamplingParams(max_tokens=16))[0] for p in prompts]
    for b, a in zip(batched, alone):
        assert b.token_ids == a.token_ids and b.nfe == a.nfe and len(b.token_ids) == 16
    steps = batched[0].steps
    assert sum(s.num_edited for s in steps) > 0 and all(len(s.edited) == s.num_edited for s in steps)
    history = batched[0].position_history()
    assert any(h["edits"] for h in history.values())
    # Every block is bounded by block_size + max_post_edit_steps steps.
    assert batched[0].nfe <= 3 * (8 + 4)
