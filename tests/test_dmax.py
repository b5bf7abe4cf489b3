"""DMax: the decision rules on hand-built logits, soft-input mixing, and end to end."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from diffulex import Diffulex, SamplingParams
from diffulex.engine.soft_inputs import SoftInputs
from diffulex.sampling.dmax import DMaxSampler

MASK, V = 9, 10


def _config(accept=0.5, commit=0.9, top_k=1):
    return SimpleNamespace(model=SimpleNamespace(mask_token_id=MASK),
                           strategy=SimpleNamespace(accept_threshold=accept, commit_confidence=commit,
                                                    token_merge_top_k=top_k),
                           sampling=SimpleNamespace())


def _logits(rows):
    """rows: list of (token, prob) -> logits whose softmax gives that token the probability."""
    out = torch.full((len(rows), V), -30.0)
    for i, (tok, p) in enumerate(rows):
        rest = (1 - p) / (V - 2)  # spread over the other non-mask ids
        for t in range(V):
            if t != MASK:
                out[i, t] = math.log(p if t == tok else rest)
    return out


def _batch(current, positions, prompt_len=2, force_all=False):
    m = len(current)
    return SimpleNamespace(block_forced=torch.tensor([True]), row_block=torch.zeros(m, dtype=torch.long),
                           row_position=torch.tensor(positions), row_token=torch.tensor(current),
                           row_prompt_len=torch.full((m,), prompt_len), row_request=torch.zeros(m, dtype=torch.long),
                           block_force_all=torch.tensor([force_all]), block_id=torch.tensor([0]),
                           block_request=torch.tensor([0]))


def _decide(current, rows, **kw):
    force_all = kw.pop("force_all", False)
    req = SimpleNamespace(sampling_params=SamplingParams(), generator=None)
    batch = _batch(current, list(range(2, 2 + len(current))), force_all=force_all)
    forbidden = torch.zeros(V, dtype=torch.bool)
    forbidden[MASK] = True
    return DMaxSampler(_config(**kw)).decide(batch, _logits(rows), [req], forbidden)[0]


def test_masks_fill_left_to_right_while_confident_and_decided_tokens_are_rewritten():
    # positions 2..6: a decided token (3) now predicted as 4, then masks with conf .8, .6, .3, .9
    d = _decide([3, MASK, MASK, MASK, MASK], [(4, 0.7), (1, 0.8), (2, 0.6), (5, 0.3), (6, 0.9)])
    assert [(p, t) for p, t, _ in d.fills] == [(3, 1), (4, 2)]  # stops at the first mask below 0.5
    assert [(p, old, new) for p, old, new, _ in d.edits] == [(2, 3, 4)]
    assert d.state["refining"] == [0]  # masks remain: the block stays open
    assert set(d.state["soft"]) == {2, 3, 4}  # every decided position is fed back soft


def test_at_least_the_leftmost_mask_and_every_mask_when_out_of_steps():
    d = _decide([MASK, MASK], [(1, 0.2), (2, 0.9)])
    assert [p for p, _, _ in d.fills] == [2]  # nothing passes before a low one: leftmost only
    d = _decide([MASK, MASK], [(1, 0.2), (2, 0.1)], force_all=True)
    assert [p for p, _, _ in d.fills] == [2, 3]


def test_commit_when_nothing_changes_or_everything_is_confident():
    assert _decide([1, 2], [(1, 0.5), (2, 0.5)]).state["refining"] == []  # no change -> commit
    assert _decide([1, 2], [(1, 0.95), (3, 0.95)]).state["refining"] == []  # changed, but all confident
    assert _decide([1, 2], [(1, 0.95), (3, 0.5)]).state["refining"] == [0]  # changed, not confident
    assert _decide([1, 2], [(1, 0.95), (3, 0.5)], commit=0.4).state["refining"] == []  # the bound is config
    assert _decide([1, 2], [(1, 0.95), (3, 0.5)], force_all=True).state["refining"] == []  # out of steps


def test_soft_inputs_mix_token_and_mask_embeddings_with_renormalization():
    emb = torch.nn.Embedding(V, 4)
    torch.nn.init.normal_(emb.weight, generator=torch.Generator().manual_seed(0))
    model = SimpleNamespace(embed=emb)
    ids = torch.tensor([1, 2, 3])
    soft = SoftInputs(torch.tensor([1]), torch.tensor([[5, 6]]), torch.tensor([[0.5, 0.2]]), MASK,
                      renormalize=False, weight=1.0)
    out = soft.embed(model, ids)
    e = emb.weight.detach()
    want = 0.5 * e[5] + 0.2 * e[6] + 0.3 * e[MASK]
    assert torch.allclose(out[1], want, atol=1e-6) and torch.equal(out[0], e[1]) and torch.equal(out[2], e[3])
    renorm = SoftInputs(torch.tensor([1]), torch.tensor([[5, 6]]), torch.tensor([[0.5, 0.2]]), MASK).embed(model, ids)
    target = 0.5 * e[5].norm() + 0.2 * e[6].norm() + 0.3 * e[MASK].norm()
    assert renorm[1].norm().item() == pytest.approx(target.item(), rel=1e-5)
    half = SoftInputs(torch.tensor([1]), torch.tensor([[5, 6]]), torch.tensor([[0.5, 0.2]]), MASK,
                      renormalize=False, weight=0.25).embed(model, ids)
    assert torch.allclose(half[1], 0.25 * want + 0.75 * e[2], atol=1e-6)


@pytest.mark.parametrize("renormalize, weight", [(True, 1.0), (False, 0.25)])
def test_dense_soft_inputs_embed_like_the_sparse_form(renormalize, weight):
    """The fixed-shape form CUDA graphs take gives the same embeddings as SoftInputs.embed."""
    from diffulex.engine.soft_inputs import embed_dense

    emb = torch.nn.Embedding(V, 4)
    torch.nn.init.normal_(emb.weight, generator=torch.Generator().manual_seed(1))
    model = SimpleNamespace(embed=emb)
    ids = torch.tensor([1, 2, 3, 4, 5])
    soft = SoftInputs(torch.tensor([3, 0]), torch.tensor([[5, 6], [7, 2]]), torch.tensor([[0.5, 0.2], [0.9, 0.1]]),
                      MASK, renormalize=renormalize, weight=weight)
    dense = soft.dense(5)
    assert dense["soft_mask"].tolist() == [True, False, False, True, False]
    got = embed_dense(model, ids, dense["soft_mask"], dense["soft_ids"], dense["soft_probs"], MASK, renormalize, weight)
    assert torch.equal(got, soft.embed(model, ids))


def test_dmax_end_to_end_batched_equals_alone_and_is_deterministic(tiny_path):
    path = tiny_path("llada2")
    kw = dict(decoding_strategy="dmax", sampling_mode="edit", block_size=8, page_size=8, accept_threshold=0.005,
              dtype="float32")
    prompts = [[5, 6, 7], [9] * 11, [20, 21, 22, 23, 24, 25, 26, 27]]
    with Diffulex(path, **kw) as llm:
        batched = llm.generate(prompts, SamplingParams(max_tokens=16))
        alone = [llm.generate([p], SamplingParams(max_tokens=16))[0] for p in prompts]
    for b, a in zip(batched, alone):
        assert b.token_ids == a.token_ids and b.nfe == a.nfe
        assert len(b.token_ids) == 16 and b.finish_reason == "length"
        blocks = len({s.blocks[0]["index"] for s in b.steps})
        assert b.nfe <= blocks * 8  # max_steps_per_block (= block_size) bounds every block
    # A block commits only after a step that changes nothing or is fully confident: some steps decide nothing.
    assert any(s.num_decided == 0 and s.num_edited == 0 for s in batched[0].steps)
    with Diffulex(path, **{**kw, "token_merge_weight": 0.0}) as hard:
        other = hard.generate(prompts, SamplingParams(max_tokens=16))
    assert any(a.token_ids != b.token_ids for a, b in zip(batched, other)), "soft inputs have an effect"
