"""The Triton W8A16 ``fp8_linear`` equals the reference (dequantize, then ``F.linear``) (CPU interpreter).

Pins: token counts 1, 3 and 33 (one partial ``BLOCK_M`` tile, several), N and K that are no
multiples of the tile or the scale block, scale blocks that are multiples of ``BLOCK_K`` (scale
per K step), narrower (``BLOCK_K`` shrinks to the block) or of no power-of-two width (scale per
element), per output channel ``[1, K]``, split-K with its fixed-order partial sum, the swapped product (``y^T = w x^T``), bias, leading
dimensions, bf16 activations; e4m3 special values (subnormals, -0, 448) load exactly; and an
FP8 model on the Triton ops equals the same FP8 model on the reference ops.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from triton_interp import interpreted, triton_interpreter  # noqa: F401  (autouse fixture)

with interpreted():
    pytest.importorskip("triton")
    import diffulex.kernels.triton  # noqa: F401  (decorate the kernels while interpreting)
    from diffulex.kernels.reference.fp8_linear import fp8_linear as ref_fp8_linear
    from diffulex.kernels.triton.fp8_linear import fp8_linear, fp8_splits, fp8_tiles
    from diffulex.quantization import FP8_DTYPE, quantize_fp8


CASES = [  # m, n, k, block, splits
    (1, 40, 72, (16, 32), None),  # BLOCK_K shrinks to 32: scale per K step
    (3, 40, 72, (128, 128), None),  # one scale block covers everything
    (33, 50, 200, (1, 200), None),  # per output channel
    (3, 24, 96, (8, 24), None),  # bk = 24: scale per element
    (1, 70, 520, (16, 32), 4),  # split-K, last slice partial
    (33, 20, 300, (4, 128), 2),  # split-K over two BLOCK_M tiles, K not a multiple of 128
]


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("m,n,k,block,splits", CASES)
def test_fp8_linear_matches_reference_fp32(m, n, k, block, splits, bias):
    gen = torch.Generator().manual_seed(m * 1000 + n + k)
    q, s = quantize_fp8(torch.randn(n, k, generator=gen) * 2, block)
    x = torch.randn(m, k, generator=gen)
    b = torch.randn(n, generator=gen) if bias else None
    ref = ref_fp8_linear(x, q, s, block, b)
    for mode in ("weights", "products", "fp16"):  # weight tiles scaled before the product, or the partial products
        for swap in (False, True):  # y = x w^T, or y^T = w x^T (the weight tile as the MMA's left operand)
            got = fp8_linear(x, q, s, block, b, splits=splits, scale_mode=mode, swap=swap)
            torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("m,n,k,block,splits", [CASES[0], CASES[3], CASES[4]])
def test_fp8_linear_matches_reference_bf16_with_leading_dims(m, n, k, block, splits):
    gen = torch.Generator().manual_seed(7)
    q, s = quantize_fp8(torch.randn(n, k, generator=gen), block)
    x = torch.randn(2, m, k, generator=gen).bfloat16()
    b = torch.randn(n, generator=gen).bfloat16()
    ref = ref_fp8_linear(x.float(), q, s, block, b.float())
    for swap in (False, True):
        got = fp8_linear(x, q, s, block, b, splits=splits, swap=swap)
        assert got.shape == (2, m, n) and got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), ref, atol=3e-2 * ref.abs().max().item(), rtol=2e-2)


def test_e4m3_special_values_load_exactly():
    values = torch.tensor([0.0, -0.0, 2 ** -9, -(2 ** -9), 2 ** -6, 448.0, -448.0, 1.125, 3.5, 240.0, 0.01953125, -1.0,
                           0.5, 2.0, 7.0, 96.0])
    q = values.to(FP8_DTYPE)[:, None].repeat(1, 16)  # [16, 16]: row i holds value i
    x = torch.zeros(1, 16)
    x[0, 0] = 1.0
    got = fp8_linear(x, q, torch.ones(1, 1), (16, 16))  # picks column 0 of each row
    assert torch.equal(got[0], q[:, 0].float())


def test_large_m_widens_the_weight_then_multiplies():
    """Above DEQUANT_ABOVE_M tokens (bf16): the dequantize kernel's weight is the reference's, and the
    product is F.linear on it. (The interpreter rounds fp32 -> bf16 toward zero, the GPU to nearest:
    one bf16 ulp apart at most here.)"""
    from diffulex.kernels.triton.fp8_linear import DEQUANT_ABOVE_M, dequantize
    from diffulex.quantization import dequantize_fp8

    gen = torch.Generator().manual_seed(3)
    for block in ((16, 32), (1, 200), (128, 128)):
        q, s = quantize_fp8(torch.randn(40, 200, generator=gen), block)
        torch.testing.assert_close(dequantize(q, s, block, torch.bfloat16), dequantize_fp8(q, s, block, torch.bfloat16),
                                   atol=0, rtol=2 ** -7)
    x = torch.randn(DEQUANT_ABOVE_M + 5, 200, generator=gen).bfloat16()
    b = torch.randn(40, generator=gen).bfloat16()
    expected = F.linear(x, dequantize_fp8(q, s, (128, 128), torch.bfloat16), b)
    got = fp8_linear(x, q, s, (128, 128), b).float()
    assert (got - expected.float()).norm() / expected.float().norm() < 1e-2
    assert not torch.equal(fp8_linear(x, q, s, (128, 128), b, dequant_above=10 ** 9), fp8_linear(x, q, s, (128, 128), b))


def test_launch_heuristics():
    assert fp8_tiles(1)[0] == 16 and fp8_tiles(33)[0] == 64 and fp8_tiles(2048)[:2] == (128, 128)
    # LLaDA-8B o_proj at batch 1: 64 N tiles -> split K to cover 132 SMs; large batches never split
    assert fp8_splits(1, 4096, 4096, 16, 64, 128, 132) == 8  # 64 tiles: 8 slices, the most
    assert fp8_splits(1, 12288, 4096, 16, 64, 128, 132) == 4  # 192 tiles: 4 slices reach 4 programs per SM
    assert fp8_splits(1, 24576, 4096, 16, 64, 128, 132) == 2
    assert fp8_splits(2048, 4096, 4096, 128, 128, 64, 132) == 1


def test_fp8_model_on_triton_ops_equals_reference_ops():
    from diffulex.config import Config
    from diffulex.engine.distributed import ParallelState
    from diffulex.engine.model_runner import ModelRunner
    from diffulex.layers.linear import LinearBase
    from diffulex.tiny import ensure_tiny_checkpoint
    from test_fp8_weights import logits

    model = ModelRunner(Config(str(ensure_tiny_checkpoint("llada", trained=True)), quantization="fp8"),
                        ParallelState()).model
    linears = [m for m in model.modules() if isinstance(m, LinearBase)]
    assert linears and all(m.quant_block is not None for m in linears)
    ref = logits(model)
    for m in linears:  # only the FP8 linears on Triton: the op under test
        m.kernels = "triton"
    torch.testing.assert_close(logits(model), ref, atol=2e-4, rtol=2e-4)
