"""Routed experts as two grouped GEMMs that read each selected expert's weights once per step.

Computes ``out[t] = sum_j w[t, j] * down_e(act(gate_e(x[t])) * up_e(x[t]))`` (act: SiLU, or GELU-tanh) with
``e = topk_ids[t, j]``, for stacked weights ``w13: [E, 2I, H]`` (gate rows ``[0, I)``, up rows
``[I, 2I)``) and ``w2: [E, H, I]``: the same function as ``kernels.reference.fused_moe``
and ``layers.moe.StackedExperts``.

Layout, all built on device without a host sync (:func:`moe_align`): the ``A = T * k``
(token, slot) assignments are grouped by expert; each expert's run is cut into blocks of
``BLOCK_M`` rows; the grid is the fixed upper bound ``cdiv(A, BLOCK_M) + min(E, A)`` blocks
and surplus blocks exit at once. Kernel 1, grid ``(blocks, cdiv(I, BN))``: gathers the
block's token rows of ``x``, computes gate and up together against one expert's ``w13``
tile, applies ``act(gate) * up`` in fp32, and stores ``inter [A, I]`` in sorted order.
Kernel 2, grid ``(blocks, cdiv(H, BN))``: ``inter @ w2[e]^T``, times the routing weight, stored
to a per-assignment buffer ``[T, k, H]``; a final ``sum`` over k gives the output. That
sum is deterministic (no atomics), at the cost of writing ``A x H`` values once.

Weights are read once per (expert, block of BLOCK_M tokens): once per step whenever an
expert has <= BLOCK_M tokens, which the shape heuristic aims for. With tensor parallelism
pass ``expert_start`` and ``num_experts`` (global): ids outside
``[expert_start, expert_start + E_local)`` contribute nothing here.

Limits: last dims of ``x``, ``w13``, ``w2`` contiguous; routing weights are applied after
the down projection (as the reference does).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from diffulex.kernels.triton.moe_align import moe_align
from diffulex.quantization.fp8 import FP8_DTYPE, scale_shape
from diffulex.kernels.triton._runtime import is_interpreting, next_pow2, pdl_enter, pdl_kwargs


@triton.jit
def _gate_up_kernel(
    x_ptr, w13_ptr, inter_ptr, order_ptr, blk_expert_ptr, blk_row0_ptr, blk_row_end_ptr,
    stride_xt, stride_we, stride_wn, num_local, H, I,
    s_ptr, stride_se, stride_sn, SCALE_N, SCALE_K,
    TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    FP32_DOT: tl.constexpr, GELU_TANH: tl.constexpr, FP8: tl.constexpr, SCALE_WEIGHTS: tl.constexpr,
    N_MAJOR: tl.constexpr, SWAP: tl.constexpr, F16_MMA: tl.constexpr, PRECISION: tl.constexpr,
    PDL: tl.constexpr,
):
    pdl_enter(PDL)
    blk = tl.program_id(1 if N_MAJOR else 0)
    e = tl.load(blk_expert_ptr + blk)
    if e >= num_local:
        return
    rows = tl.load(blk_row0_ptr + blk) + tl.arange(0, BLOCK_M)  # [BM] sorted assignment rows
    r_ok = rows < tl.load(blk_row_end_ptr + blk)
    tok = tl.load(order_ptr + rows, mask=r_ok, other=0) // TOP_K  # [BM]
    n = tl.program_id(0 if N_MAJOR else 1) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN] intermediate columns
    n_ok = n < I
    w_base = w13_ptr + e.to(tl.int64) * stride_we
    if SWAP:  # transposed products [BN, BM]: the weight tile is the MMA's left operand
        acc_g = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
        acc_u = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
    else:
        acc_g = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        acc_u = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    kk = tl.arange(0, BLOCK_K)
    for k0 in range(0, H, BLOCK_K):
        k_ok = k0 + kk < H
        x = tl.load(x_ptr + tok[:, None] * stride_xt + (k0 + kk)[None, :], mask=r_ok[:, None] & k_ok[None, :],
                    other=0.0)  # [BM, BK]
        w_mask = n_ok[:, None] & k_ok[None, :]
        wg = tl.load(w_base + n[:, None] * stride_wn + (k0 + kk)[None, :], mask=w_mask, other=0.0)  # [BN, BK]
        wu = tl.load(w_base + (n + I)[:, None] * stride_wn + (k0 + kk)[None, :], mask=w_mask, other=0.0)
        if FP8:  # one scale per (row tile, k tile): constant over this K tile (BLOCK_K divides SCALE_K)
            s_base = s_ptr + e.to(tl.int64) * stride_se + k0 // SCALE_K
            sg = tl.load(s_base + (n // SCALE_N) * stride_sn, mask=n_ok, other=0.0)  # [BN]
            su = tl.load(s_base + ((n + I) // SCALE_N) * stride_sn, mask=n_ok, other=0.0)
            if SCALE_WEIGHTS:  # dequantized to the activation dtype (the reference's values)
                wg = (wg.to(tl.float32) * sg[:, None]).to(x_ptr.dtype.element_ty)
                wu = (wu.to(tl.float32) * su[:, None]).to(x_ptr.dtype.element_ty)
        if FP32_DOT:
            x = x.to(tl.float32)
            wg = wg.to(tl.float32)
            wu = wu.to(tl.float32)
        elif F16_MMA:  # raw e4m3 values and the activations as fp16 operands (the products scaled below)
            x = x.to(tl.float16)
            wg = wg.to(tl.float16)
            wu = wu.to(tl.float16)
        else:  # FP8 weights: e4m3 -> bf16 is exact
            wg = wg.to(x.dtype)
            wu = wu.to(x.dtype)
        if SWAP:
            pg = tl.dot(wg, tl.trans(x), input_precision=PRECISION)  # [BN, BM]
            pu = tl.dot(wu, tl.trans(x), input_precision=PRECISION)
            if FP8 and not SCALE_WEIGHTS:  # the partial product scaled (the accumulation leaves the MMA)
                pg = pg * sg[:, None]
                pu = pu * su[:, None]
        else:
            pg = tl.dot(x, tl.trans(wg), input_precision=PRECISION)  # [BM, BN]
            pu = tl.dot(x, tl.trans(wu), input_precision=PRECISION)
            if FP8 and not SCALE_WEIGHTS:
                pg = pg * sg[None, :]
                pu = pu * su[None, :]
        acc_g += pg
        acc_u += pu
    if GELU_TANH:  # 0.5 g (1 + tanh(a)) = g * sigmoid(2a), a = sqrt(2/pi) (g + 0.044715 g^3)
        h = acc_g * tl.sigmoid(1.5957691216057308 * (acc_g + 0.044715 * acc_g * acc_g * acc_g)) * acc_u
    else:
        h = acc_g * tl.sigmoid(acc_g) * acc_u
    if SWAP:
        tl.store(inter_ptr + rows[None, :].to(tl.int64) * I + n[:, None], h.to(inter_ptr.dtype.element_ty),
                 mask=n_ok[:, None] & r_ok[None, :])
    else:
        tl.store(inter_ptr + rows[:, None].to(tl.int64) * I + n[None, :], h.to(inter_ptr.dtype.element_ty),
                 mask=r_ok[:, None] & n_ok[None, :])


@triton.jit
def _down_kernel(
    inter_ptr, w2_ptr, out_ptr, weights_ptr, order_ptr, blk_expert_ptr, blk_row0_ptr, blk_row_end_ptr,
    stride_we, stride_wn, num_local, H, I,
    s_ptr, stride_se, stride_sn, SCALE_N, SCALE_K,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, FP32_DOT: tl.constexpr,
    FP8: tl.constexpr, SCALE_WEIGHTS: tl.constexpr, N_MAJOR: tl.constexpr, SWAP: tl.constexpr, F16_MMA: tl.constexpr, PRECISION: tl.constexpr,
    PDL: tl.constexpr,
):
    pdl_enter(PDL)
    blk = tl.program_id(1 if N_MAJOR else 0)
    e = tl.load(blk_expert_ptr + blk)
    if e >= num_local:
        return
    rows = tl.load(blk_row0_ptr + blk) + tl.arange(0, BLOCK_M)
    r_ok = rows < tl.load(blk_row_end_ptr + blk)
    assign = tl.load(order_ptr + rows, mask=r_ok, other=0)  # [BM] flat (token, slot) index
    n = tl.program_id(0 if N_MAJOR else 1) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN] hidden columns
    n_ok = n < H
    w_base = w2_ptr + e.to(tl.int64) * stride_we
    if SWAP:
        acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    kk = tl.arange(0, BLOCK_K)
    for k0 in range(0, I, BLOCK_K):
        k_ok = k0 + kk < I
        h = tl.load(inter_ptr + rows[:, None].to(tl.int64) * I + (k0 + kk)[None, :],
                    mask=r_ok[:, None] & k_ok[None, :], other=0.0)  # [BM, BK]
        w = tl.load(w_base + n[:, None] * stride_wn + (k0 + kk)[None, :], mask=n_ok[:, None] & k_ok[None, :],
                    other=0.0)  # [BN, BK]
        if FP8:
            sw = tl.load(s_ptr + e.to(tl.int64) * stride_se + (n // SCALE_N) * stride_sn + k0 // SCALE_K,
                         mask=n_ok, other=0.0)  # [BN]
            if SCALE_WEIGHTS:
                w = (w.to(tl.float32) * sw[:, None]).to(inter_ptr.dtype.element_ty)
        if FP32_DOT:
            h = h.to(tl.float32)
            w = w.to(tl.float32)
        elif F16_MMA:
            h = h.to(tl.float16)
            w = w.to(tl.float16)
        else:
            w = w.to(h.dtype)
        if SWAP:
            p = tl.dot(w, tl.trans(h), input_precision=PRECISION)  # [BN, BM]
            if FP8 and not SCALE_WEIGHTS:
                p = p * sw[:, None]
        else:
            p = tl.dot(h, tl.trans(w), input_precision=PRECISION)  # [BM, BN]
            if FP8 and not SCALE_WEIGHTS:
                p = p * sw[None, :]
        acc += p
    route_w = tl.load(weights_ptr + assign, mask=r_ok, other=0.0)  # [BM]
    if SWAP:
        acc = acc * route_w[None, :]
        tl.store(out_ptr + assign[None, :].to(tl.int64) * H + n[:, None], acc.to(out_ptr.dtype.element_ty),
                 mask=n_ok[:, None] & r_ok[None, :])
    else:
        acc = acc * route_w[:, None]
        tl.store(out_ptr + assign[:, None].to(tl.int64) * H + n[None, :], acc.to(out_ptr.dtype.element_ty),
                 mask=r_ok[:, None] & n_ok[None, :])


def _gate_up_tile(block_m: int, inter_size: int, hidden: int) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_K, warps, stages) of the gate/up kernel, from ``experiments/moe_tune.py`` on an
    H100 at LLaDA2.0-mini shapes: few tokens per expert favour a deep K tile and 4 warps (T=32/128:
    -3 to -5 % against 64/64/8/3), many favour a wide N tile (T=2048: -4 %)."""
    if block_m <= 16:
        return min(32, max(16, next_pow2(inter_size))), min(128, max(16, next_pow2(hidden))), 4, 3
    if block_m >= 64:
        return min(128, max(16, next_pow2(inter_size))), min(64, max(16, next_pow2(hidden))), 8, 4
    return min(64, max(16, next_pow2(inter_size))), min(64, max(16, next_pow2(hidden))), 8, 3


def _down_tile(block_m: int, inter_size: int, hidden: int, fp8: bool = False) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_K, warps, stages) of the down kernel. ``experiments/moe_tune.py`` on an H200 at
    LLaDA2.0-mini shapes, T = 2,048 / 4,096 tokens: 128-row blocks with 256-wide N tiles beat the
    64 x 64 default by 2-15 % (whole call 0.832 vs 0.983 ms at 4,096 tokens). FP8 experts in small
    blocks (``--fp8 --sweep-scale fp16 --graph``, T = 32): 128 x 256 tiles with 4 warps, whole call
    0.186 -> 0.146 ms (the bf16 launch is at the read ceiling already: 4.2 TB/s)."""
    if fp8 and block_m <= 32:
        return min(128, max(16, next_pow2(hidden))), min(256, max(16, next_pow2(inter_size))), 4, 3
    if block_m >= 128:
        return min(256, max(16, next_pow2(hidden))), min(64, max(16, next_pow2(inter_size))), 8, 3
    return min(64, max(16, next_pow2(hidden))), min(64, max(16, next_pow2(inter_size))), 8, 3


# How FP8 experts apply their scales (``fused_moe(fp8_scale=...)``). ``moe_tune.py --fp8 --graph`` on an
# H200 at mini shapes (whole call, T = 32 / 64 / 256): weights 0.210 / 0.271 / 0.321 ms, products
# 0.222 / 0.286 / 0.338, fp16 0.195 / 0.249 / 0.296.
FP8_SCALE_DEFAULT = "fp16"

# Blocks of at most this many rows run swapped (``swap_default``), per weight dtype. Same sweep: swapped
# products were no faster for bf16 (0.242 vs 0.242 ms at T = 32: at the read ceiling either way) and
# slower for FP8 (fp16 0.229 vs 0.195 ms), so neither swaps.
SWAP_AT_MOST_ROWS = {"bf16": 0, "fp8": 0}


def swap_default(block_m: int, fp8: bool) -> bool:
    """Whether blocks of ``block_m`` rows compute the transposed products (:data:`SWAP_AT_MOST_ROWS`)."""
    return block_m <= SWAP_AT_MOST_ROWS["fp8" if fp8 else "bf16"]


# Column-tile-major launch order (``n_major``) by default: off. ``moe_tune.py --n-major`` on an H200
# at mini shapes (whole call, default tiles): 0.705 -> 0.648 ms at 2,048 tokens, 0.895 -> 0.951 ms
# at 4,096; two points give no rule that beats the row-major order everywhere.
N_MAJOR_DEFAULT = False


@triton.jit
def _sum_k_kernel(src_ptr, out_ptr, H, K: tl.constexpr, BLOCK_H: tl.constexpr, PDL: tl.constexpr):
    pdl_enter(PDL)
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)  # [BH]
    ok = h < H
    acc = tl.zeros([BLOCK_H], tl.float32)
    for j in tl.static_range(K):  # in order j = 0 .. K-1, fp32
        acc += tl.load(src_ptr + (t * K + j) * H + h, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + t * H + h, acc.to(out_ptr.dtype.element_ty), mask=ok)


SUM_BLOCK_H = 1024


def _fp8_args(w13, w2, w13_scale, w2_scale, block, hidden: int, inter_size: int) -> dict:
    """Scale pointers / strides / tile sizes per kernel (dummies without FP8 weights), checked."""
    fp8 = w13.dtype == FP8_DTYPE
    if fp8 != (w2.dtype == FP8_DTYPE) or fp8 != (w13_scale is not None) or fp8 != (w2_scale is not None):
        raise ValueError("fused_moe: FP8 experts need both w13 and w2 in float8_e4m3fn with w13_scale, w2_scale "
                         f"and block (got w13 {w13.dtype}, w2 {w2.dtype}, scales "
                         f"{w13_scale is not None}/{w2_scale is not None})")
    if not fp8:
        return {"on": False, "gate_up": (w13, 0, 0, 1, 1 << 30), "down": (w13, 0, 0, 1, 1 << 30)}
    if block is None:
        raise ValueError("fused_moe: FP8 experts need block=(block_n, block_k), the tile of their scales")
    bn, bk = block
    for name, w, s in (("w13", w13, w13_scale), ("w2", w2, w2_scale)):
        if tuple(s.shape) != scale_shape(tuple(w.shape), block) or s.stride(-1) != 1:
            raise ValueError(f"fused_moe: {name}_scale {tuple(s.shape)} does not tile {name} {tuple(w.shape)} "
                             f"in blocks {tuple(block)} (expected {scale_shape(tuple(w.shape), block)}, "
                             "contiguous last dim)")
    return {"on": True, "gate_up": (w13_scale, w13_scale.stride(0), w13_scale.stride(1), bn, bk),
            "down": (w2_scale, w2_scale.stride(0), w2_scale.stride(1), bn, bk)}


def _k_tile(block_k: int, scale_args: tuple, reduce: int) -> int:
    """``block_k`` shrunk so that one K tile never straddles two scale columns (FP8 only)."""
    scale_k = scale_args[4]
    if scale_k >= reduce:
        return block_k  # one scale column covers the whole reduction
    tile = block_k
    while tile > 16 and scale_k % tile:
        tile //= 2
    if scale_k % tile:
        raise ValueError(f"fused_moe: FP8 scale block_k={scale_k} is not a multiple of 16 (the smallest K tile); "
                         "quantize the experts with block_k a multiple of 16 (e.g. 128)")
    return tile


def sum_assignments(per_assign: torch.Tensor, torch_sum: bool = False) -> torch.Tensor:
    """``[T, k, H]`` -> ``[T, H]``: each token's weighted expert outputs summed in fp32, in slot order,
    rounded once (``per_assign.sum(1)``'s values; ``experiments/moe_small_tune.py``, H100, k=9,
    H=2048: 2.1 vs 3.2 us at 32 tokens, 4.2 vs 7.8 at 512, 30.5 vs 38.4 at 2,048, identical
    results). ``torch_sum``: torch's reduction (A/B)."""
    if torch_sum:
        return per_assign.sum(1)
    n_tok, top_k, hidden = per_assign.shape
    out = torch.empty(n_tok, hidden, dtype=per_assign.dtype, device=per_assign.device)
    if n_tok:
        block_h = min(SUM_BLOCK_H, next_pow2(hidden))
        _sum_k_kernel[(n_tok, triton.cdiv(hidden, block_h))](per_assign.contiguous(), out, hidden, K=top_k,
                                                              BLOCK_H=block_h, num_warps=4, **pdl_kwargs(out.device))
    return out


def fused_moe(
    x: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    expert_start: int = 0,
    num_experts: int | None = None,
    block_m: int | None = None,
    tiles: dict[str, tuple[int, int, int, int]] | None = None,
    activation: str = "silu",
    w13_scale: torch.Tensor | None = None,
    w2_scale: torch.Tensor | None = None,
    block: tuple[int, int] | None = None,
    n_major: bool | None = None,
    fp8_scale: str | None = None,
    swap: bool | None = None,
) -> torch.Tensor:
    """``x: [T, H]``, ``topk_ids, topk_weights: [T, k]``, ``w13: [E, 2I, H]``, ``w2: [E, H, I]`` -> ``[T, H]`` (x dtype).

    ``num_experts``: the global expert count when ``w13`` holds only this rank's experts
    (None: all experts are local). ``block_m`` overrides the tokens-per-block heuristic;
    ``tiles`` the launch of either kernel: ``{"gate_up"|"down": (BLOCK_N, BLOCK_K, warps,
    stages)}`` (``experiments/moe_tune.py`` sweeps them on a GPU). ``activation``: ``"silu"`` or
    ``"gelu_tanh"`` (DiffusionGemma's experts). ``swap``: both kernels compute the transposed
    products (the weight tile as the MMA's left operand, the block's tokens its narrow side); None:
    :func:`swap_default` by ``block_m`` and the weight dtype. ``fp8_scale`` (FP8 experts; None:
    :data:`FP8_SCALE_DEFAULT`): ``"weights"`` dequantizes each weight tile to the activation dtype before
    the product (the reference's values), ``"products"`` scales each K step's partial product,
    ``"fp16"`` the same with the raw e4m3 values and the activations as fp16 MMA operands (one
    conversion per two weights instead of several; activations beyond fp16's 65,504 give non-finite
    outputs).
    """
    if activation not in ("silu", "gelu_tanh"):
        raise ValueError(f"fused_moe: activation {activation!r}, expected 'silu' or 'gelu_tanh'")
    n_tok, hidden = x.shape
    top_k = topk_ids.shape[1]
    num_local, two_i, _ = w13.shape
    inter_size = two_i // 2
    if w13.shape[2] != hidden or tuple(w2.shape) != (num_local, hidden, inter_size):
        raise ValueError(f"fused_moe: w13 {tuple(w13.shape)} / w2 {tuple(w2.shape)} do not fit hidden {hidden}")
    if x.stride(1) != 1 or w13.stride(2) != 1 or w2.stride(2) != 1:
        raise ValueError("fused_moe: x, w13 and w2 need a contiguous last dim")
    all_local = expert_start == 0 and (num_experts is None or num_experts == num_local)
    n_assign = n_tok * top_k
    if n_assign == 0:
        return torch.zeros_like(x)
    avg = n_assign / num_local
    block_m = block_m or min(128, max(16, next_pow2(int(2 * avg))))
    order, blk_expert, blk_row0, blk_row_end, _ = moe_align(topk_ids, num_local, block_m, expert_start)
    fp32_dot = is_interpreting() or x.dtype == torch.float32
    n_blocks = blk_expert.shape[0]
    fp8 = _fp8_args(w13, w2, w13_scale, w2_scale, block, hidden, inter_size)
    fp8_scale = FP8_SCALE_DEFAULT if fp8_scale is None else fp8_scale
    if fp8_scale not in ("weights", "products", "fp16"):
        raise ValueError(f"fused_moe: fp8_scale {fp8_scale!r}, expected 'weights', 'products' or 'fp16'")
    scale_weights = fp8_scale == "weights"
    f16_mma = fp8["on"] and fp8_scale == "fp16" and not fp32_dot

    swap = swap_default(block_m, fp8["on"]) if swap is None else bool(swap)
    inter = torch.empty(n_assign, inter_size, dtype=x.dtype, device=x.device)  # [A, I] sorted rows
    tiles = tiles or {}
    bn, bk, warps, stages = tiles.get("gate_up") or _gate_up_tile(block_m, inter_size, hidden)
    bk = _k_tile(bk, fp8["gate_up"], hidden)
    n_major = N_MAJOR_DEFAULT if n_major is None else bool(n_major)
    grid = lambda tiles_n: (tiles_n, n_blocks) if n_major else (n_blocks, tiles_n)  # noqa: E731
    _gate_up_kernel[grid(triton.cdiv(inter_size, bn))](
        x, w13, inter, order, blk_expert, blk_row0, blk_row_end,
        x.stride(0), w13.stride(0), w13.stride(1), num_local, hidden, inter_size, *fp8["gate_up"],
        TOP_K=top_k, BLOCK_M=block_m, BLOCK_N=bn, BLOCK_K=bk, FP32_DOT=fp32_dot, GELU_TANH=activation == "gelu_tanh",
        FP8=fp8["on"], SCALE_WEIGHTS=scale_weights, N_MAJOR=n_major, SWAP=swap, F16_MMA=f16_mma, PRECISION="ieee" if fp32_dot else "tf32", num_warps=warps,
        num_stages=stages, **pdl_kwargs(x.device),
    )
    alloc = torch.empty if all_local else torch.zeros  # non-local assignments are never written
    per_assign = alloc(n_tok, top_k, hidden, dtype=x.dtype, device=x.device)  # [T, k, H]
    bn, bk, warps, stages = tiles.get("down") or _down_tile(block_m, inter_size, hidden, fp8["on"])
    bk = _k_tile(bk, fp8["down"], inter_size)
    _down_kernel[grid(triton.cdiv(hidden, bn))](
        inter, w2, per_assign, topk_weights.float().contiguous(), order, blk_expert, blk_row0, blk_row_end,
        w2.stride(0), w2.stride(1), num_local, hidden, inter_size, *fp8["down"],
        BLOCK_M=block_m, BLOCK_N=bn, BLOCK_K=bk, FP32_DOT=fp32_dot, FP8=fp8["on"], SCALE_WEIGHTS=scale_weights,
        N_MAJOR=n_major, SWAP=swap, F16_MMA=f16_mma, PRECISION="ieee" if fp32_dot else "tf32", num_warps=warps, num_stages=stages, **pdl_kwargs(x.device),
    )
    return sum_assignments(per_assign)  # [T, H]
