"""Triton greedy confidence equals the greedy path of select_tokens (CPU interpreter).

Pins: argmax over allowed ids only, ties -> lowest id, confidence under the full unmasked
softmax, vocabularies spanning several chunks with ragged tails, bf16 logits.
"""

from __future__ import annotations

import pytest
import torch

from triton_interp import interpreted, triton_interpreter  # noqa: F401  (autouse fixture)

with interpreted():  # triton and the kernels read the setting at import: keep it on then
    pytest.importorskip("triton")
    from diffulex.kernels import reference as ref
    from diffulex.kernels.triton.greedy_confidence import greedy_confidence
    from diffulex.sampling.select import SelectionParams, select_tokens


@pytest.mark.parametrize("rows,vocab", [(1, 37), (5, 1000), (3, 5003)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_reference_and_select_tokens(rows, vocab, dtype):
    gen = torch.Generator().manual_seed(vocab)
    logits = (torch.randn(rows, vocab, generator=gen) * 4).to(dtype)
    forbidden = torch.rand(vocab, generator=gen) < 0.1
    forbidden[logits.float().argmax(-1)] = True  # the unmasked winner must be skipped
    tokens, conf = greedy_confidence(logits, forbidden)
    ref_tokens, ref_conf = ref.greedy_confidence(logits, forbidden)
    assert torch.equal(tokens, ref_tokens)
    torch.testing.assert_close(conf, ref_conf, atol=1e-6, rtol=1e-5)
    greedy = SelectionParams(temperature=torch.zeros(rows), top_k=torch.zeros(rows, dtype=torch.long),
                             top_p=torch.ones(rows))
    sel_tokens, sel_conf = select_tokens(logits, forbidden, greedy)
    assert torch.equal(ref_tokens, sel_tokens)
    torch.testing.assert_close(ref_conf, sel_conf)


def test_ties_go_to_lowest_allowed_id():
    vocab = 4500  # ties spread over lanes and chunks
    logits = torch.zeros(2, vocab)
    logits[:, [7, 2100, 4200, 4499]] = 3.0
    forbidden = torch.zeros(vocab, dtype=torch.bool)
    forbidden[7] = True
    tokens, conf = greedy_confidence(logits, forbidden)
    assert tokens.tolist() == [2100, 2100]
    torch.testing.assert_close(conf, ref.greedy_confidence(logits, forbidden)[1])


def test_all_forbidden_row_falls_back_to_id_zero_like_argmax():
    logits = torch.randn(2, 50)
    tokens, conf = greedy_confidence(logits, torch.ones(50, dtype=torch.bool))
    ref_tokens, ref_conf = ref.greedy_confidence(logits, torch.ones(50, dtype=torch.bool))
    assert torch.equal(tokens, ref_tokens)
    torch.testing.assert_close(conf, ref_conf)
