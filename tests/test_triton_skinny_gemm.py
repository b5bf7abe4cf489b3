"""The Triton skinny GEMM equals ``F.linear`` (CPU interpreter); its launch heuristic fits and fills the GPU.

Pins: fp32 results at tiny shapes for one and several K splits, a partial last N tile, K not a
multiple of BLOCK_K, 1 / 5 / 32 tokens, with and without bias; bf16 within bf16 tolerance;
split-K counters left zeroed (a reused buffer gives the same result twice); leading batch dims and row strides; ``supports`` and argument checks; ``skinny_config``
at real shapes and under tighter shared memory.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from triton_interp import interpreted, triton_interpreter  # noqa: F401  (autouse fixture)

with interpreted():  # triton and the kernels read the setting at import: keep it on then
    pytest.importorskip("triton")
    from diffulex.kernels.triton.skinny_gemm import SkinnyConfig, skinny_config, skinny_linear, supports


def operands(m, n, k, dtype=torch.float32, bias=False, seed=0):
    gen = torch.Generator().manual_seed(seed * 1000 + m * 31 + n * 7 + k)
    x = torch.randn(m, k, generator=gen).to(dtype)
    w = (torch.randn(n, k, generator=gen) * k ** -0.5).to(dtype)
    b = torch.randn(n, generator=gen).to(dtype) if bias else None
    return x, w, b


CASES = [  # (M, N, K, bias, (BLOCK_N, BLOCK_K, SPLIT_K, warps, stages))
    (1, 64, 64, False, (32, 32, 1, 4, 3)),  # one split
    (5, 48, 96, True, (32, 32, 3, 4, 3)),  # 3 splits of one tile; partial last N tile; bias
    (32, 48, 64, False, (32, 16, 2, 4, 3)),  # 2 splits of 2 K tiles; partial N tile
    (5, 64, 96, False, (16, 64, 2, 4, 3)),  # K % BLOCK_K != 0: masked last K tile in split 1
    (32, 64, 96, True, (64, 32, 8, 4, 3)),  # SPLIT_K above the K tiles: capped at 3
    (1, 48, 96, True, None),  # the default heuristic
]


@pytest.mark.parametrize("m,n,k,bias,config", CASES)
def test_skinny_linear_matches_f_linear_fp32(m, n, k, bias, config):
    x, w, b = operands(m, n, k, bias=bias)
    out = skinny_linear(x, w, b, config=config)
    assert out.shape == (m, n) and out.dtype == torch.float32
    torch.testing.assert_close(out, F.linear(x, w, b), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("split", [1, 2])
def test_skinny_linear_bf16(split):
    x, w, b = operands(32, 48, 96, dtype=torch.bfloat16, bias=True)
    out = skinny_linear(x, w, b, config=(32, 32, split, 4, 3))
    assert out.dtype == torch.bfloat16
    expected = F.linear(x.float(), w.float(), b.float())
    torch.testing.assert_close(out.float(), expected, atol=2e-2, rtol=2e-2)
    # fp32 accumulation rounded once: within one bf16 ulp of the exact result (the interpreter truncates)
    assert ((out.float() - expected).abs() <= expected.abs() * 2 ** -7 + 1e-6).all()


def test_counters_are_left_zeroed_so_a_reused_buffer_serves_the_next_call():
    x, w, b = operands(5, 48, 96, bias=True, seed=1)
    counters = torch.zeros(4, dtype=torch.int32)
    first = skinny_linear(x, w, b, config=(32, 32, 3, 4, 3), counters=counters)
    assert counters.tolist() == [0, 0, 0, 0]
    second = skinny_linear(x, w, b, config=(32, 32, 3, 4, 3), counters=counters)
    assert torch.equal(first, second)
    assert counters.tolist() == [0, 0, 0, 0]
    torch.testing.assert_close(first, F.linear(x, w, b), atol=1e-5, rtol=1e-5)


def test_leading_dims_flatten_into_tokens_and_row_strides_are_read():
    x, w, b = operands(6, 64, 64, bias=True, seed=2)
    out = skinny_linear(x.view(2, 3, 64), w, b, config=(32, 64, 1, 4, 3))
    assert out.shape == (2, 3, 64)
    torch.testing.assert_close(out.view(6, 64), F.linear(x, w, b), atol=1e-5, rtol=1e-5)
    xs = torch.randn(6, 96)[:, 16:80]  # rows 96 apart: read in place through the row stride
    torch.testing.assert_close(skinny_linear(xs, w, config=(32, 32, 2, 4, 3)), F.linear(xs, w), atol=1e-5, rtol=1e-5)


def test_supports_and_argument_checks():
    x, w, _ = operands(5, 48, 64)
    assert supports(x, w)
    assert supports(torch.zeros(2, 64, 64), w)  # M = 128
    assert not supports(torch.zeros(129, 64), w)  # M > 128
    assert supports(x[:, :48], torch.zeros(48, 48))  # a column slice: rows strided, last dim contiguous
    assert not supports(x, torch.zeros(48, 32))  # K mismatch
    assert not supports(torch.zeros(5, 40), torch.zeros(48, 40))  # K % 16 != 0
    assert not supports(x.to(torch.bfloat16), w)  # mixed dtypes
    assert not supports(x.to(torch.int32), w.to(torch.int32))
    assert not supports(torch.zeros(64, 5).t(), w)  # x's last dim strided
    assert not supports(x, torch.zeros(64, 48).t())  # weight's last dim strided
    with pytest.raises(ValueError, match="unsupported"):
        skinny_linear(torch.zeros(129, 64), w)
    with pytest.raises(ValueError, match="bias"):
        skinny_linear(x, w, torch.zeros(47))
    with pytest.raises(ValueError, match="counters"):
        skinny_linear(x, w, config=(32, 32, 2, 4, 3), counters=torch.zeros(1, dtype=torch.int32))
    with pytest.raises(ValueError, match="powers of two"):
        skinny_linear(x, w, config=(48, 32, 1, 4, 3))


SHAPES = [  # (N, K): LLaDA-8B and LLaDA2.0-mini projections
    (12288, 4096), (4096, 4096), (24576, 4096), (4096, 12288), (126464, 4096),
    (3072, 2048), (2048, 2048), (10240, 2048), (2048, 5120), (157184, 2048),
]


@pytest.mark.parametrize("m", [1, 32, 64, 128])
@pytest.mark.parametrize("n,k", SHAPES)
def test_skinny_config_deep_pipeline_and_splits_only_for_short_grids(m, n, k):
    sms, smem = 132, 227 * 1024
    cfg = skinny_config(m, n, k, sms, 2, smem)
    assert isinstance(cfg, SkinnyConfig)
    block_m = max(16, 1 << (m - 1).bit_length())
    assert cfg.block_n == 64 and cfg.block_k == (64 if m > 64 else 128) and cfg.num_warps == 4
    tiles, k_tiles = -(-n // cfg.block_n), -(-k // cfg.block_k)
    assert cfg.split_k & (cfg.split_k - 1) == 0 and k_tiles // cfg.split_k >= 16  # >= 16 K tiles a split
    programs = sms // 3 if m <= 64 else 2 * sms // 3
    if tiles >= programs:
        assert cfg.split_k == 1  # everything but the smallest projections: no merge at all
    else:  # split until the grid reaches the program target, or the splits would get short
        assert tiles * cfg.split_k >= programs or k_tiles // (2 * cfg.split_k) < 16
        assert tiles * cfg.split_k // 2 < programs  # the smallest such split
    # one wave of one program per SM: all shared memory; more: half, so two programs share an SM
    fits = smem if tiles * cfg.split_k <= sms else smem // 2
    stage = (cfg.block_n + block_m) * cfg.block_k * 2
    assert cfg.num_stages == min(5, (fits - 4 * 1024) // stage) and cfg.num_stages >= 3


def test_skinny_config_fits_fp32_and_smaller_shared_memory():
    big = skinny_config(32, 4096, 4096, 132, 2, 227 * 1024)
    fp32 = skinny_config(32, 4096, 4096, 132, 4, 227 * 1024)
    assert fp32.num_stages < big.num_stages and fp32.num_stages * (64 + 32) * fp32.block_k * 4 <= 223 * 1024
    small = skinny_config(128, 4096, 4096, 108, 4, 99 * 1024)  # an A100-class budget, fp32, M = 128
    assert small.num_stages >= 2 and small.num_stages * (64 + 128) * small.block_k * 4 <= 95 * 1024
    assert skinny_config(32, 2048, 5120, 132).split_k == 2  # 32 tiles: split to reach ~44 programs
    assert skinny_config(32, 2048, 2048, 132).split_k == 1  # but not into splits of < 16 K tiles
    assert skinny_config(32, 2048, 12288, 264).split_k == 4  # twice the SMs: twice the splits
