"""The sampler's decisions on hand-built logits: token choice, confidence, acceptance."""

from __future__ import annotations

import math

import pytest
import torch

from diffulex.config.enums import ConfidenceKind
from diffulex.sampling import SelectionParams, accept_masks, select_tokens
from diffulex.sampling_params import SamplingParams


def _greedy(m: int) -> SelectionParams:
    return SelectionParams(torch.zeros(m), torch.zeros(m, dtype=torch.long), torch.ones(m))


def test_greedy_skips_forbidden_ids_and_reports_unmodified_probability():
    logits = torch.tensor([[0.0, 5.0, 1.0, 0.0],   # best is id 1, but it is forbidden (mask)
                           [3.0, 0.0, 1.0, 9.0]])  # best is id 3: padded vocab row
    forbidden = torch.tensor([False, True, False, True])
    tokens, conf = select_tokens(logits, forbidden, _greedy(2))
    assert tokens.tolist() == [2, 0]
    # Confidence is the chosen token's probability under the full softmax (as the official loop).
    assert conf[0].item() == pytest.approx(torch.softmax(logits[0], -1)[2].item())
    assert conf[1].item() == pytest.approx(torch.softmax(logits[1], -1)[0].item())


def test_greedy_ties_go_to_the_lowest_id():
    tokens, _ = select_tokens(torch.tensor([[1.0, 2.0, 2.0]]), torch.zeros(3, dtype=torch.bool), _greedy(1))
    assert tokens.tolist() == [1]


def test_margin_and_negative_entropy_confidences():
    logits = torch.tensor([[math.log(0.5), math.log(0.3), math.log(0.2)]])
    none = torch.zeros(3, dtype=torch.bool)
    _, margin = select_tokens(logits, none, _greedy(1), ConfidenceKind.MARGIN)
    assert margin.item() == pytest.approx(0.2)
    _, negent = select_tokens(logits, none, _greedy(1), ConfidenceKind.NEG_ENTROPY)
    assert negent.item() == pytest.approx(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2))


def test_sampling_respects_top_k_and_top_p_and_seed():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(200, 1)
    none = torch.zeros(4, dtype=torch.bool)
    gens = [torch.Generator().manual_seed(1)] * 200
    k2 = SelectionParams(torch.ones(200), torch.full((200,), 2), torch.ones(200), gens)
    tokens, conf = select_tokens(logits, none, k2)
    assert set(tokens.tolist()) == {0, 1}  # top-k = 2 keeps ids 0 and 1 only
    assert conf[tokens == 0][0].item() == pytest.approx(0.5 / 0.8)  # prob under the filtered distribution
    p7 = SelectionParams(torch.ones(200), torch.zeros(200, dtype=torch.long), torch.full((200,), 0.7), gens)
    assert set(select_tokens(logits, none, p7)[0].tolist()) == {0, 1}  # 0.5 < 0.7 <= 0.8
    again = select_tokens(logits, none, SelectionParams(torch.ones(200), torch.full((200,), 2), torch.ones(200),
                                                        [torch.Generator().manual_seed(1)] * 200))[0]
    assert torch.equal(tokens, again)  # same seed, same draws


def test_accept_masks_threshold_forcing_and_gating():
    #            block 0 ----------  block 1 ---------  block 2 (not forced)
    conf = torch.tensor([0.95, 0.2, 0.91, 0.3, 0.6, 0.6, 0.5, 0.99, 0.4])
    is_mask = torch.tensor([True, True, False, True, True, True, True, True, True])
    block = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    forced = torch.tensor([True, True, False])
    thr = torch.full((3,), 0.9)
    accept = accept_masks(conf, is_mask, block, forced, thr)
    # block 0: every mask strictly above 0.9 (the non-mask 0.91 is ignored), no forcing needed
    # block 1: nothing above 0.9 -> forced: the best mask; ties (0.6, 0.6) -> the lower row
    # block 2: not forced -> only above threshold
    assert accept.tolist() == [True, False, False, False, True, False, False, True, False]


def test_accept_masks_is_strict_and_handles_blocks_without_masks():
    conf = torch.tensor([0.9, 0.9, 0.1])
    is_mask = torch.tensor([True, True, False])
    accept = accept_masks(conf, is_mask, torch.tensor([0, 0, 1]), torch.tensor([True, True]), torch.full((2,), 0.9))
    assert accept.tolist() == [True, False, False]  # 0.9 is not > 0.9: forced best, first of the tie


@pytest.mark.parametrize("kwargs, field", [
    ({"temperature": -1.0}, "temperature"), ({"top_k": -1}, "top_k"), ({"top_p": 0.0}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"), ({"max_nfe": 0}, "max_nfe"), ({"stop": [""]}, "stop"),
    ({"seed": -3}, "seed"), ({"max_repetition_run": 0}, "max_repetition_run"), ({"temperature": True}, "temperature"),
])
def test_sampling_params_reject_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


def test_min_fill_takes_the_best_n_or_everything_above_the_threshold():
    from diffulex.sampling.accept import accept_masks

    conf = torch.tensor([0.1, 0.5, 0.3, 0.2, 0.95, 0.97, 0.2, 0.1])
    is_mask = torch.tensor([True, True, True, False, True, True, True, True])
    block = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    forced = torch.tensor([True, True])
    thr = torch.full((2,), 0.9)
    got = accept_masks(conf, is_mask, block, forced, thr, min_fill=torch.tensor([2, 1]))
    # block 0: nothing above 0.9, its 2 best masks (0.5, 0.3; the decided 0.2 is not a mask);
    # block 1: the two above 0.9 (more than its min_fill 1)
    assert got.tolist() == [False, True, True, False, True, True, False, False]
    # min_fill 1 is the plain rule
    assert torch.equal(accept_masks(conf, is_mask, block, forced, thr, min_fill=torch.ones(2, dtype=torch.long)),
                       accept_masks(conf, is_mask, block, forced, thr))
    # not forced: only the threshold counts
    none = accept_masks(conf, is_mask, block, torch.tensor([False, False]), thr, min_fill=torch.tensor([3, 3]))
    assert none.tolist() == [False] * 4 + [True, True, False, False]
