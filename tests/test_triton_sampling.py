"""Triton greedy confidence equals the greedy path of select_tokens (CPU interpreter).

Pins: argmax over allowed ids only, ties -> lowest id, confidence under the full unmasked
softmax, vocabularies spanning several chunks with ragged tails, bf16 logits; the same with the
vocabulary cut into slices merged by a second launch (incl. empty slices and ties across slices).
"""

from __future__ import annotations

import pytest
import torch

from triton_interp import interpreted, triton_interpreter  # noqa: F401  (autouse fixture)

with interpreted():  # triton and the kernels read the setting at import: keep it on then
    pytest.importorskip("triton")
    from diffulex.kernels import reference as ref
    from diffulex.kernels.triton.greedy_confidence import greedy_confidence, vocab_splits
    from diffulex.sampling.select import SelectionParams, select_tokens


@pytest.mark.parametrize("rows,vocab", [(1, 37), (5, 1000), (3, 5003)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("splits", [None, 2, 8])
def test_matches_reference_and_select_tokens(rows, vocab, dtype, splits):
    gen = torch.Generator().manual_seed(vocab)
    logits = (torch.randn(rows, vocab, generator=gen) * 4).to(dtype)
    forbidden = torch.rand(vocab, generator=gen) < 0.1
    forbidden[logits.float().argmax(-1)] = True  # the unmasked winner must be skipped
    tokens, conf = greedy_confidence(logits, forbidden, splits=splits)  # 8 slices of 5003: some empty
    ref_tokens, ref_conf = ref.greedy_confidence(logits, forbidden)
    assert torch.equal(tokens, ref_tokens)
    torch.testing.assert_close(conf, ref_conf, atol=1e-6, rtol=1e-5)
    greedy = SelectionParams(temperature=torch.zeros(rows), top_k=torch.zeros(rows, dtype=torch.long),
                             top_p=torch.ones(rows))
    sel_tokens, sel_conf = select_tokens(logits, forbidden, greedy)
    assert torch.equal(ref_tokens, sel_tokens)
    torch.testing.assert_close(ref_conf, sel_conf)


@pytest.mark.parametrize("splits", [None, 2, 4])
def test_ties_go_to_lowest_allowed_id(splits):
    vocab = 4500  # ties spread over lanes, chunks and (split) slices
    logits = torch.zeros(2, vocab)
    logits[:, [7, 2100, 4200, 4499]] = 3.0
    forbidden = torch.zeros(vocab, dtype=torch.bool)
    forbidden[7] = True
    tokens, conf = greedy_confidence(logits, forbidden, splits=splits)
    assert tokens.tolist() == [2100, 2100]
    torch.testing.assert_close(conf, ref.greedy_confidence(logits, forbidden)[1])


@pytest.mark.parametrize("splits", [None, 4])
def test_all_forbidden_row_falls_back_to_id_zero_like_argmax(splits):
    logits = torch.randn(2, 50)
    tokens, conf = greedy_confidence(logits, torch.ones(50, dtype=torch.bool), splits=splits)
    ref_tokens, ref_conf = ref.greedy_confidence(logits, torch.ones(50, dtype=torch.bool))
    assert torch.equal(tokens, ref_tokens)
    torch.testing.assert_close(conf, ref_conf)


def test_vocab_splits_fill_the_gpu_only_when_rows_do_not():
    cpu = torch.device("cpu")  # the heuristic assumes an H100's 132 SMs off CUDA
    assert vocab_splits(32, 157184, 2048, cpu) == 16  # a batch-1 step: 512 programs
    assert vocab_splits(1, 157184, 2048, cpu) == 16  # at least 4 chunks of 2048 per slice
    assert vocab_splits(512, 157184, 2048, cpu) == 2
    assert vocab_splits(2048, 157184, 2048, cpu) == 1  # the rows fill the GPU: no merge launch
    assert vocab_splits(32, 5000, 2048, cpu) == 1  # too short a row to cut
    with pytest.raises(ValueError, match="power of two"):
        greedy_confidence(torch.randn(2, 50), torch.zeros(50, dtype=torch.bool), splits=3)
