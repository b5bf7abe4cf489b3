"""W8A16 linear: ``y = x @ (q * scale)^T (+ b)`` with an FP8 (e4m3) weight read as 1 byte per element.

At the batch sizes of decoding (a few to a few dozen tokens per forward) a linear layer is
bound by reading its weight: an FP8 weight is half the bytes of a bf16 one. Each program
loads ``[BLOCK_K, BLOCK_N]`` FP8 weight tiles, widens them to the activation dtype in
registers (e4m3 is exact in bf16 / fp16) and runs the tensor-core ``tl.dot`` with float32
accumulation. The weight's scales (one float32 per ``[bn, bk]`` tile of ``q``,
:mod:`diffulex.quantization.fp8`) are applied in one of two ways:

* ``bk`` a multiple of ``BLOCK_K`` (or one scale block over all of K): each K step's partial
  product is multiplied by the ``[BLOCK_N]`` scales of its tile column (the scale is constant
  over the step), so the weight itself is never rescaled;
* otherwise every weight element is multiplied by its tile's scale before the product
  (exactly the reference's dequantize-then-round).

Small ``M`` (memory-bound): ``BLOCK_M = 16..64`` and the K axis split into ``S`` slices until
the grid covers the GPU's SMs; the slices' float32 partial sums are added in a fixed order by a
second small kernel (with the bias and the cast), so results are deterministic (no atomics).
Large ``M``: big tiles, no split. Nothing here reads device values on the host, so the op can
be captured in CUDA graphs. Needs a GPU whose Triton supports ``float8e4nv`` (sm_89+: Ada,
Hopper); under ``TRITON_INTERPRET=1`` the products run in float32 (the interpreter's bf16
``tl.dot`` is unreliable).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from diffulex.kernels.triton._runtime import is_interpreting, next_pow2, pdl_enter, pdl_kwargs, sm_count

MAX_SPLITS = 8
# Programs per SM the K split aims for at small M: on an H200 (fp8_linear_tune.py, LLaDA-8B q|k|v,
# M = 1 / 32) 4 K slices over 192 N tiles beat 1 by 25 % / 16 %: more weight bytes in flight.
PROGRAMS_PER_SM = 4
# Above this many tokens the product is compute-bound: the weight is widened to the activation
# dtype by one elementwise kernel and multiplied by cuBLAS (H200, LLaDA-8B shapes at M = 128..2,048:
# the W8A16 Triton GEMM ran at 0.2-0.3x the speed of bf16 cuBLAS; the widening costs ~3 bytes per
# weight of extra traffic).
DEQUANT_ABOVE_M = 64

# Token counts up to which the product runs swapped (``y^T = w x^T``, :func:`_fp8_linear_swap_kernel`).
# fp8_linear_tune.py on an H200, LLaDA-8B shapes, FP8 time over bf16 F.linear, unswapped -> swapped:
# M = 32: q|k|v 0.96 -> 0.90, o 1.12 -> 0.84, gate|up 0.94 -> 0.87, down 0.91 -> 0.80; M = 64 mixed
# (q|k|v 1.36 -> 1.21, o 1.51 -> 1.60, down 1.13 -> 1.22).
SWAP_AT_MOST_M = 32

SCALE_MODES = ("weights", "products", "fp16")
SCALE_MODE_DEFAULT = "weights"

_DOT_DTYPES = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32}


@triton.jit
def _fp8_linear_kernel(
    x_ptr, q_ptr, s_ptr, b_ptr, y_ptr, M, N, K, stride_xm, stride_qn, stride_sn, stride_ym, bn, bk, k_per_split,
    HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, SCALE_PER_STEP: tl.constexpr, SCALE_WEIGHTS: tl.constexpr,
    ACT_DTYPE: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    PDL: tl.constexpr,
):
    pdl_enter(PDL)
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    split = tl.program_id(2)
    m_ok, n_ok = m < M, n < N
    k_lo = split * k_per_split
    k_hi = tl.minimum(k_lo + k_per_split, K)
    kk = tl.arange(0, BLOCK_K)
    s_row = s_ptr + (n // bn).to(tl.int64) * stride_sn  # [BN] this column block's scale row
    x_rows = x_ptr + m.to(tl.int64)[:, None] * stride_xm  # [BM, 1]
    q_cols = q_ptr + n.to(tl.int64)[None, :] * stride_qn  # [1, BN]
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        k = k0 + kk  # [BK]
        k_ok = k < k_hi
        x = tl.load(x_rows + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)  # [BM, BK]
        w = tl.load(q_cols + k[:, None], mask=k_ok[:, None] & n_ok[None, :], other=0.0)  # [BK, BN] fp8
        if SCALE_PER_STEP and SCALE_WEIGHTS:  # the tile dequantized to the activation dtype: the MMA accumulates
            scale = tl.load(s_row + k0 // bk, mask=n_ok, other=0.0)  # [BN]
            w = (w.to(tl.float32) * scale[None, :]).to(ACT_DTYPE).to(DOT_DTYPE)
            acc += tl.dot(x.to(DOT_DTYPE), w, input_precision=PRECISION)
        elif SCALE_PER_STEP:
            scale = tl.load(s_row + k0 // bk, mask=n_ok, other=0.0)  # [BN]
            part = tl.dot(x.to(DOT_DTYPE), w.to(DOT_DTYPE), input_precision=PRECISION)
            acc += part * scale[None, :]
        else:
            scale = tl.load(s_row[None, :] + (k // bk)[:, None], mask=k_ok[:, None] & n_ok[None, :],
                            other=0.0)  # [BK, BN]
            w = (w.to(tl.float32) * scale).to(ACT_DTYPE).to(DOT_DTYPE)  # the reference's rounding
            acc += tl.dot(x.to(DOT_DTYPE), w, input_precision=PRECISION)
    if SPLIT:  # float32 partial sums [S, M, N], added by _split_sum_kernel
        out = y_ptr + split.to(tl.int64) * M * N + m.to(tl.int64)[:, None] * N + n[None, :]
        tl.store(out, acc, mask=m_ok[:, None] & n_ok[None, :])
    else:
        if HAS_BIAS:
            acc += tl.load(b_ptr + n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        out = y_ptr + m.to(tl.int64)[:, None] * stride_ym + n[None, :]
        tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _fp8_linear_swap_kernel(
    x_ptr, q_ptr, s_ptr, b_ptr, y_ptr, M, N, K, stride_xm, stride_qn, stride_sn, stride_ym, bn, bk, k_per_split,
    HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, SCALE_WEIGHTS: tl.constexpr, ACT_DTYPE: tl.constexpr,
    DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, PDL: tl.constexpr,
):
    """``y^T [BN, BM] = w [BN, BK] @ x^T [BK, BM]``: the widened weight tile is the MMA's left operand
    (Hopper's wgmma takes it from registers, no round trip through shared memory) and the few tokens
    its narrow right side. Per-step scales only (BLOCK_K inside one scale block)."""
    pdl_enter(PDL)
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    split = tl.program_id(2)
    m_ok, n_ok = m < M, n < N
    k_lo = split * k_per_split
    k_hi = tl.minimum(k_lo + k_per_split, K)
    kk = tl.arange(0, BLOCK_K)
    s_row = s_ptr + (n // bn).to(tl.int64) * stride_sn  # [BN]
    x_cols = x_ptr + m.to(tl.int64)[None, :] * stride_xm  # [1, BM]
    q_rows = q_ptr + n.to(tl.int64)[:, None] * stride_qn  # [BN, 1]
    acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        k = k0 + kk  # [BK]
        k_ok = k < k_hi
        xt = tl.load(x_cols + k[:, None], mask=k_ok[:, None] & m_ok[None, :], other=0.0)  # [BK, BM]
        w = tl.load(q_rows + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)  # [BN, BK] fp8
        scale = tl.load(s_row + k0 // bk, mask=n_ok, other=0.0)  # [BN]
        if SCALE_WEIGHTS:
            w = (w.to(tl.float32) * scale[:, None]).to(ACT_DTYPE).to(DOT_DTYPE)
            acc += tl.dot(w, xt.to(DOT_DTYPE), input_precision=PRECISION)
        else:
            acc += tl.dot(w.to(DOT_DTYPE), xt.to(DOT_DTYPE), input_precision=PRECISION) * scale[:, None]
    if SPLIT:
        out = y_ptr + split.to(tl.int64) * M * N + m.to(tl.int64)[None, :] * N + n[:, None]
        tl.store(out, acc, mask=n_ok[:, None] & m_ok[None, :])
    else:
        if HAS_BIAS:
            acc += tl.load(b_ptr + n, mask=n_ok, other=0.0).to(tl.float32)[:, None]
        out = y_ptr + m.to(tl.int64)[None, :] * stride_ym + n[:, None]
        tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=n_ok[:, None] & m_ok[None, :])


@triton.jit
def _split_sum_kernel(p_ptr, b_ptr, y_ptr, M, N, stride_ym, S: tl.constexpr, HAS_BIAS: tl.constexpr,
                      BLOCK: tl.constexpr, PDL: tl.constexpr):
    pdl_enter(PDL)
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # flat index over [M, N]
    ok = i < M * N
    acc = tl.zeros([BLOCK], tl.float32)
    for s in range(S):  # fixed order: deterministic
        acc += tl.load(p_ptr + s * M * N + i, mask=ok, other=0.0)
    n = i % N
    if HAS_BIAS:
        acc += tl.load(b_ptr + n, mask=ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + (i // N).to(tl.int64) * stride_ym + n, acc.to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _dequant_kernel(q_ptr, s_ptr, w_ptr, N, K, stride_qn, stride_sn, bn, bk, BLOCK_N: tl.constexpr,
                    BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    pdl_enter(PDL)
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)  # [BK]
    ok = (n < N)[:, None] & (k < K)[None, :]
    q = tl.load(q_ptr + n.to(tl.int64)[:, None] * stride_qn + k[None, :], mask=ok, other=0.0)  # [BN, BK] fp8
    s = tl.load(s_ptr + (n // bn).to(tl.int64)[:, None] * stride_sn + (k // bk)[None, :], mask=ok, other=0.0)
    tl.store(w_ptr + n.to(tl.int64)[:, None] * K + k[None, :], (q.to(tl.float32) * s).to(w_ptr.dtype.element_ty),
             mask=ok)


def dequantize(q: torch.Tensor, scale: torch.Tensor, block: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """``q [N, K]`` FP8 with ``scale`` in tiles ``block`` -> ``[N, K]`` in ``dtype`` (each value ``q * s``
    rounded once: :func:`diffulex.quantization.fp8.dequantize_fp8`'s values)."""
    n, k = q.shape
    w = torch.empty((n, k), dtype=dtype, device=q.device)
    grid = (triton.cdiv(n, 32), triton.cdiv(k, 128))
    _dequant_kernel[grid](q, scale, w, n, k, q.stride(0), scale.stride(0), int(block[0]), int(block[1]),
                          BLOCK_N=32, BLOCK_K=128, num_warps=4, **pdl_kwargs(q.device))
    return w


def fp8_tiles(m: int) -> tuple[int, int, int, int, int]:
    """``(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages)`` by token count ``m`` (untuned starting points:
    small ``m`` reads the weight once with narrow N tiles; large ``m`` takes big compute tiles)."""
    if m <= 64:  # H200 fp8_linear_tune.py (8B q|k|v, M = 1 / 32): 3 stages with 4 K slices was best
        return max(16, next_pow2(m)), 64, 128, 4, 3
    if m <= 256:
        return 64, 128, 64, 4, 4
    return 128, 128, 64, 8, 3


def fp8_splits(m: int, n: int, k: int, block_m: int, block_n: int, block_k: int, sms: int) -> int:
    """K slices (a power of two <= ``MAX_SPLITS``, each >= 2 ``BLOCK_K`` long) until the grid has at least
    ``PROGRAMS_PER_SM`` programs per SM; 1 for compute-bound ``m`` (> 64)."""
    if m > 64:
        return 1
    tiles = triton.cdiv(m, block_m) * triton.cdiv(n, block_n)
    splits = 1
    while tiles * splits < PROGRAMS_PER_SM * sms and splits < MAX_SPLITS and k >= 4 * splits * block_k:
        splits *= 2
    return splits


def fp8_linear(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, block: tuple[int, int],
               bias: torch.Tensor | None = None, *, splits: int | None = None,
               tiles: tuple[int, int, int] | None = None, num_warps: int | None = None,
               num_stages: int | None = None, scale_mode: str | None = None,
               dequant_above: int = DEQUANT_ABOVE_M, swap: bool | None = None) -> torch.Tensor:
    """``x [..., K]`` (bf16 / fp16 / fp32), ``q`` float8_e4m3fn ``[N, K]``, ``scale`` float32
    ``[ceil(N / bn), ceil(K / bk)]`` -> ``x @ (q * scale)^T (+ bias)`` ``[..., N]`` in ``x.dtype``.
    ``splits``, ``tiles`` ``(BLOCK_M, BLOCK_N, BLOCK_K)``, ``num_warps`` and ``num_stages`` override
    the launch heuristics (tuning). ``scale_mode`` (None: :data:`SCALE_MODE_DEFAULT`): ``"weights"`` multiplies each weight tile by its
    scales before the product (the MMA accumulates across K steps), ``"products"`` scales each K
    step's partial product (the accumulation leaves the MMA every step), ``"fp16"`` the same with the raw
    e4m3 values and the activations as fp16 MMA operands (e4m3 -> fp16 is one conversion per two values,
    e4m3 -> bf16 several; bf16 activations are exact in fp16 from 2^-14 to 65,504 in magnitude, beyond
    which the output is not finite: the engine's non-finite check names it).
    More than ``dequant_above`` tokens (bf16 / fp16 activations, no ``tiles`` override): the weight is
    widened by :func:`dequantize` and multiplied by ``F.linear``. ``swap``: compute ``y^T = w x^T`` (the
    weight tile as the MMA's left operand); None: :data:`SWAP_AT_MOST_M` decides. Needs per-step scales
    (``BLOCK_K`` inside one scale block); otherwise the unswapped kernel runs."""
    scale_mode = SCALE_MODE_DEFAULT if scale_mode is None else scale_mode
    if scale_mode not in SCALE_MODES:
        raise ValueError(f"fp8_linear: scale_mode {scale_mode!r}, expected one of {', '.join(SCALE_MODES)}")
    n, k = q.shape
    bn, bk = int(block[0]), int(block[1])
    if q.dtype != torch.float8_e4m3fn or x.shape[-1] != k or x.dtype not in _DOT_DTYPES:
        raise ValueError(f"fp8_linear: x {tuple(x.shape)} {x.dtype} and q {tuple(q.shape)} {q.dtype} need "
                         "x [..., K] in bf16 / fp16 / fp32 and q float8_e4m3fn [N, K]")
    if tuple(scale.shape) != (triton.cdiv(n, bn), triton.cdiv(k, bk)) or scale.dtype != torch.float32:
        raise ValueError(f"fp8_linear: scale {tuple(scale.shape)} {scale.dtype} does not tile q {tuple(q.shape)} "
                         f"in blocks {(bn, bk)}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    q = q if q.stride(-1) == 1 else q.contiguous()
    scale = scale if scale.stride(-1) == 1 else scale.contiguous()
    m = x2.shape[0]
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return y.reshape(*lead, n)
    if k == 0:
        y.zero_()
        return (y if bias is None else y + bias.to(y.dtype)).reshape(*lead, n)
    if m > dequant_above and tiles is None and x.dtype != torch.float32:
        w = dequantize(q, scale, (bn, bk), x.dtype)  # [N, K]: compute-bound, cuBLAS on the widened weight
        return F.linear(x2, w, None if bias is None else bias.to(x.dtype)).reshape(*lead, n)
    block_m, block_n, block_k, warps, stages = fp8_tiles(m)
    if tiles is not None:
        block_m, block_n, block_k = tiles
    # The per-step scale needs each K step inside one scale block: BLOCK_K | bk, or one block over K.
    per_step = bk >= k or bk % block_k == 0
    if not per_step and (bk & -bk) >= 16 and tiles is None:
        block_k, per_step = min(block_k, bk & -bk), True
    splits = splits or fp8_splits(m, n, k, block_m, block_n, block_k, sm_count(x.device))
    k_per_split = triton.cdiv(triton.cdiv(k, splits), block_k) * block_k
    splits = triton.cdiv(k, k_per_split)  # no empty slice
    interp = is_interpreting()
    dot_dtype = tl.float32 if interp else _DOT_DTYPES[x.dtype]
    if scale_mode == "fp16" and per_step and dot_dtype != tl.float32:
        dot_dtype = tl.float16  # e4m3 -> fp16 is one conversion per two values; bf16 activations -> fp16 exact
    precision = "ieee" if dot_dtype == tl.float32 else "tf32"
    has_bias = bias is not None
    b = bias if has_bias else y  # a placeholder pointer when there is no bias
    launch = pdl_kwargs(x.device)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n), splits)
    out = torch.empty((splits, m, n), dtype=torch.float32, device=x.device) if splits > 1 else y
    args = (x2, q, scale, b, out, m, n, k, x2.stride(0), q.stride(0), scale.stride(0), y.stride(0), bn, bk, k_per_split)
    common = dict(HAS_BIAS=has_bias, SPLIT=splits > 1, SCALE_WEIGHTS=scale_mode == "weights" or not per_step,
                  ACT_DTYPE=_DOT_DTYPES[x.dtype], DOT_DTYPE=dot_dtype, PRECISION=precision, BLOCK_M=block_m,
                  BLOCK_N=block_n, BLOCK_K=block_k, num_warps=num_warps or warps, num_stages=num_stages or stages,
                  **launch)
    if (m <= SWAP_AT_MOST_M if swap is None else swap) and per_step:
        _fp8_linear_swap_kernel[grid](*args, **common)
    else:
        _fp8_linear_kernel[grid](*args, SCALE_PER_STEP=per_step, **common)
    if splits > 1:
        block = 1024
        _split_sum_kernel[(triton.cdiv(m * n, block),)](out, b, y, m, n, y.stride(0), S=splits, HAS_BIAS=has_bias,
                                                        BLOCK=block, num_warps=4, **launch)
    return y.reshape(*lead, n)


__all__ = ["dequantize", "fp8_linear", "fp8_splits", "fp8_tiles"]
