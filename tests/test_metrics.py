"""The metric definitions of diffulex.engine.metrics: TPF over returned tokens, accuracy, AUP."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from diffulex import Diffulex, SamplingParams
from diffulex.engine import metrics
from diffulex.engine.components import EngineComponents
from diffulex.sampling.base import Decision, Sampler


class LeftmostK(Sampler):
    """Fill exactly the K leftmost masks of every in-flight request per step (greedy tokens)."""

    K = 3

    def decide(self, batch: Any, logits: torch.Tensor, reqs: list[Any], forbidden: torch.Tensor) -> list[Decision]:
        probs = torch.softmax(logits.float().masked_fill(forbidden, float("-inf")), dim=-1)  # [M, V]
        conf, tokens = probs.max(dim=-1)  # [M], [M]
        current = batch.input_ids[batch.meta.logits_indices]  # [M]
        is_mask = current == self.config.model.mask_token_id
        out = [Decision() for _ in reqs]
        for r in range(len(reqs)):
            rows = ((batch.row_request == r) & is_mask).nonzero().squeeze(1)
            rows = rows[batch.row_position[rows].argsort()][: self.K]
            out[r].fills += [(int(batch.row_position[i]), int(tokens[i]), float(conf[i])) for i in rows]
        return out


def test_tpf_counts_returned_tokens_only_with_a_sampler_of_known_k(tiny_path):
    path = tiny_path("llada2")
    llm = Diffulex(path, model_name="llada2_mini", decoding_strategy="multi_bd", buffer_size=1, block_size=32,
                   enforce_eager=True)
    llm_components = EngineComponents.for_config(llm.config).replace(sampler=LeftmostK)
    llm.exit()
    llm = Diffulex(path, model_name="llada2_mini", decoding_strategy="multi_bd", buffer_size=1, block_size=32,
                   enforce_eager=True, components=llm_components)
    out = llm.generate([[5, 6, 7, 8, 9]], SamplingParams(max_tokens=40, ignore_eos=True))
    llm.exit()
    (t,) = out.trajectories
    # Blocks of 32 from position 0: the prompt (5 tokens) sits in block 0, whose 27 masks take
    # ceil(27 / 3) = 9 forwards; 40 tokens reach into block 1, decoded whole: ceil(32 / 3) = 11.
    assert t.num_generated == 40 and t.nfe == 9 + 11
    assert t.num_decided == 27 + 32  # the overflow past max_tokens was decoded ...
    assert t.tpf == out.tpf == pytest.approx(40 / 20)  # ... but TPF counts returned tokens only
    assert out.summary()["tpf"] == pytest.approx(2.0)


def test_accuracy_is_the_fraction_correct():
    assert metrics.accuracy([True, False, True, True]) == 0.75
    assert metrics.accuracy([]) == 0.0


def test_aup_follows_the_d3llm_formula():
    # One point: the rectangle rho * y.
    assert metrics.aup([(2.0, 80.0)]) == pytest.approx(160.0)
    # Two points, y_max 90: 1 * 90 + (3 - 1) * (88 W(88) + 90 W(90)) / 2, W(90) = 1.
    w88 = math.exp(-3 * (1 - 88 / 90))
    assert metrics.aup([(3.0, 88.0), (1.0, 90.0)]) == pytest.approx(90 + 2 * (88 * w88 + 90) / 2)
    # A point more than 5 points below the slowest one's accuracy is dropped.
    assert metrics.aup([(1.0, 90.0), (4.0, 50.0)]) == pytest.approx(90.0)
    # y_max from other methods lowers the weight of this method's points.
    assert metrics.aup([(1.0, 90.0), (2.0, 90.0)], y_max=100.0) < metrics.aup([(1.0, 90.0), (2.0, 90.0)])
    with pytest.raises(ValueError, match="percentages"):
        metrics.aup([(1.0, 90.0), (2.0, 150.0)])
    with pytest.raises(ValueError, match="TPF must be > 0"):
        metrics.aup([(0.0, 50.0)])
