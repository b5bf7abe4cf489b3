"""Router logits in fp32 as split-K partial sums: ``partials[s] = x[:, K_s] @ W[:, K_s]^T``.

An MoE router's linear layer is tiny (LLaDA2.0-mini: ``[T, 2048] x [256, 2048]^T``) but kept
in fp32 as the published models compute it. Through cuBLAS it costs a cast of ``x`` and a
SIMT SGEMM that runs on a handful of SMs (~8 us per layer at T=32 on an H100). Here the
bf16 ``x`` is read and widened inside the kernel, and the K axis is cut into ``S`` slices so
the grid ``(T tiles, E tiles, S)`` covers the GPU; the slices' partial logits
``[S, T, E]`` are summed in a fixed order by the consumer (the group-limited top-k kernel
loads the ``S`` slices of a row at once), so the result is deterministic and needs no
atomics or extra launch. The products run on the tensor cores as three TF32 products
(``precision="tf32x3"``: each fp32 operand split into a TF32 high part and a TF32 remainder;
about fp32 accuracy, the dropped low x low product is below fp32 rounding), or as fp32 FMA
(``"ieee"``, GPUs without TF32). On an H100 (``experiments/router_tune.py``, the whole router with
its top-k, graph-timed) tf32x3 takes 11 us at 32 tokens against 18 us for FMA and 19 us for
cuBLAS's SGEMM, and 50 us against 87 us (cuBLAS) at 2,048 tokens, with a smaller error against
fp64 logits than either; so every step size uses it.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from diffulex.kernels.triton._runtime import next_pow2, pdl_enter, pdl_kwargs

MAX_SPLITS = 8  # the top-k kernel loads all slices of a row in one [S, E] tile
TARGET_PROGRAMS = 128  # about one program per SM of an H100 at batch-1 sizes


@triton.jit
def _router_partial_kernel(
    x_ptr, w_ptr, part_ptr, T, E, H, stride_xt, stride_we, k_per_split,
    BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr, PDL: tl.constexpr,
):
    pdl_enter(PDL)
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)  # [BT]
    e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)  # [BE]
    s = tl.program_id(2)
    t_ok, e_ok = t < T, e < E
    k_lo = s * k_per_split
    k_hi = tl.minimum(k_lo + k_per_split, H)
    kk = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_T, BLOCK_E], tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        k_ok = k0 + kk < k_hi
        x = tl.load(x_ptr + t[:, None].to(tl.int64) * stride_xt + (k0 + kk)[None, :],
                    mask=t_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)  # [BT, BK]
        w = tl.load(w_ptr + e[:, None] * stride_we + (k0 + kk)[None, :],
                    mask=e_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)  # [BE, BK]
        acc += tl.dot(x, tl.trans(w), input_precision=PRECISION)
    out = part_ptr + s.to(tl.int64) * T * E + t[:, None].to(tl.int64) * E + e[None, :]
    tl.store(out, acc, mask=t_ok[:, None] & e_ok[None, :])


def router_tiles(n_tok: int) -> tuple[int, int, int, int]:
    """``(BLOCK_T, BLOCK_E, BLOCK_K, num_warps)`` by step size: the best launches of
    ``experiments/router_tune.py`` on an H100 at LLaDA2.0-mini's 256 x 2048."""
    if n_tok <= 64:  # decode steps of one or two blocks
        return min(64, max(16, next_pow2(n_tok))), 16, 64, 4
    if n_tok <= 1024:
        return 64, 32, 64, 4
    return 128, 64, 64, 8


def router_splits(n_tok: int, n_experts: int, hidden: int, block_t: int, block_e: int, block_k: int) -> int:
    """K slices for a launch of these tiles: split (at most ``MAX_SPLITS`` ways, whole ``BLOCK_K``
    slices) until the grid has about ``TARGET_PROGRAMS`` programs; a power of two."""
    tiles = triton.cdiv(n_tok, block_t) * triton.cdiv(n_experts, block_e)
    splits = max(1, min(MAX_SPLITS, TARGET_PROGRAMS // tiles, triton.cdiv(hidden, block_k)))
    return 1 << (splits.bit_length() - 1)


@functools.lru_cache(maxsize=None)
def default_precision(device: torch.device) -> str:
    """``tf32x3`` where the GPU has TF32 tensor cores (compute capability >= 8), else ``ieee``."""
    if device.type != "cuda":
        return "tf32x3"  # the interpreter computes the products in fp32 either way
    return "tf32x3" if torch.cuda.get_device_capability(device)[0] >= 8 else "ieee"


PRECISIONS = ("ieee", "tf32x3")


def router_logit_partials(x: torch.Tensor, weight: torch.Tensor, splits: int | None = None,
                          precision: str | None = None, tiles: tuple[int, int, int] | None = None,
                          num_warps: int | None = None, num_stages: int = 3) -> torch.Tensor:
    """``x: [T, H]`` (any float dtype), ``weight: [E, H]`` -> ``partials [S, T, E]`` fp32, whose sum over
    ``S`` (in order) is ``F.linear(x.float(), weight.float())``. ``splits`` overrides the heuristic
    (a power of two <= ``MAX_SPLITS``); ``precision`` one of ``PRECISIONS`` (default:
    :func:`default_precision`); ``tiles`` ``(BLOCK_T, BLOCK_E, BLOCK_K)``, ``num_warps`` and
    ``num_stages`` override the launch (tuning)."""
    precision = precision or default_precision(x.device)
    if precision not in PRECISIONS:
        raise ValueError(f"router_logit_partials: precision {precision!r}, expected one of {PRECISIONS}")
    n_tok, hidden = x.shape
    n_experts = weight.shape[0]
    if weight.shape[1] != hidden or x.stride(1) != 1 or weight.stride(1) != 1:
        raise ValueError(f"router_logit_partials: x {tuple(x.shape)} / weight {tuple(weight.shape)} need the same "
                         f"hidden size and contiguous rows")
    block_t, block_e, block_k, warps = router_tiles(n_tok)
    num_warps = num_warps or warps
    if tiles is not None:
        block_t, block_e, block_k = tiles
    splits = splits or router_splits(n_tok, n_experts, hidden, block_t, block_e, block_k)
    if splits & (splits - 1) or not 1 <= splits <= MAX_SPLITS:
        raise ValueError(f"router_logit_partials: splits={splits}, expected a power of two <= {MAX_SPLITS}")
    k_per_split = triton.cdiv(triton.cdiv(hidden, splits), block_k) * block_k
    partials = torch.empty(splits, n_tok, n_experts, dtype=torch.float32, device=x.device)
    if n_tok:
        grid = (triton.cdiv(n_tok, block_t), triton.cdiv(n_experts, block_e), splits)
        _router_partial_kernel[grid](x, weight, partials, n_tok, n_experts, hidden, x.stride(0), weight.stride(0),
                                     k_per_split, BLOCK_T=block_t, BLOCK_E=block_e, BLOCK_K=block_k,
                                     PRECISION=precision, num_warps=num_warps, num_stages=num_stages,
                                     **pdl_kwargs(x.device))
    return partials
