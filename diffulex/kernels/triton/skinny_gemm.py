"""Skinny GEMM ``y = x @ W^T (+ bias)`` for few tokens: a weight stream that aims at HBM bandwidth.

``x: [M, K]`` (M <= 128: the tokens of one decode step), ``W: [N, K]`` (an ``nn.Linear``
weight, K contiguous), ``y: [M, N]`` in x's dtype, fp32 accumulation. At such M the GEMM is
memory bound: its time is the time to read W once, so the kernel is built to stream W.

Layout: the grid is ``(cdiv(N, BLOCK_N), SPLIT_K)``. Program ``(t, s)`` owns output columns
``[t * BLOCK_N, (t + 1) * BLOCK_N)`` and the ``s``-th run of ``k_tiles_per_split`` K tiles of
``BLOCK_K``; it loops over them, loading a ``[BLOCK_N, BLOCK_K]`` tile of W and a
``[BLOCK_M, BLOCK_K]`` tile of x per step (``num_stages`` deep software pipeline) and
accumulating ``acc[BLOCK_N, BLOCK_M] += W_tile @ x_tile^T``. Operands are swapped (W is the
MMA's M side), so the tensor-core tile is at least 64 rows of W even for 1 token, and the token
count only sets the narrow side ``BLOCK_M = max(16, next_pow2(M))``. Rows past N or M are
wrapped (``% N``, ``% M``) rather than masked, so W and x loads carry no mask unless K is not a
multiple of BLOCK_K; the wrapped rows are dropped at the store.

Split-K (``SPLIT_K > 1``, to give a few output tiles enough programs to fill the GPU):
each program stores its fp32 partial to ``workspace[t, s]`` and bumps ``counters[t]``; the
program that sees ``SPLIT_K - 1`` (the last of its tile to arrive) sums the ``SPLIT_K``
partials in the fixed order ``s = 0, 1, ...`` (so the result is deterministic, independent of
which program is last), adds the bias, writes y and sets ``counters[t]`` back to 0. SPLIT_K
is a compile-time constant (the merge is unrolled): one compiled kernel per split count used.

Counters: either the caller passes a long-lived zeroed int32 buffer (at least ``cdiv(N,
BLOCK_N)`` entries, allocated once outside any CUDA-graph capture); the kernel leaves it zeroed
again, so it serves every later call and graph replay with no memset. Or, by default, the
wrapper allocates ``torch.zeros`` per call (one small memset; also valid during capture, where
the graph's pool owns it). A shared buffer must not serve two launches that can run at once
(two streams); launches on one stream are ordered, so one buffer serves all layers there.
The fp32 workspace is ``torch.empty`` per call (``cdiv(N, BLOCK_N) x SPLIT_K x BLOCK_N x
BLOCK_M``: a few MB at most, it stays in L2).

Limits (:func:`supports`): 1 <= M <= 128, K a multiple of 16, x and W of one dtype among
bf16 / fp16 / fp32 with contiguous last dims.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from diffulex.kernels.triton._runtime import is_interpreting, next_pow2

MAX_M = 128
_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


class SkinnyConfig(NamedTuple):
    """One launch: output columns and K depth per tile, K splits, warps, pipeline stages."""

    block_n: int
    block_k: int
    split_k: int
    num_warps: int
    num_stages: int


@triton.jit
def _skinny_gemm_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr,
    M, N, K, stride_xm, stride_wn, stride_ym, k_tiles_per_split,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, FP32_DOT: tl.constexpr,
):
    # SPLIT_K == 1: grid (tiles, 1), each program writes its y tile. Else grid (tiles, SPLIT_K);
    # partials to ws [tiles, SPLIT_K, BLOCK_N, BLOCK_M] fp32, the last program of a tile
    # (cnt_ptr[tile]) sums them in split order and resets the counter.
    pid_n = tl.program_id(0)
    s = tl.program_id(1)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN] output columns = W rows
    rm = tl.arange(0, BLOCK_M)  # [BM] tokens
    rk = tl.arange(0, BLOCK_K)  # [BK]
    w_rows = (rn % N).to(tl.int64)  # wrapped: loads need no row mask
    x_rows = rm % M
    k_begin = s * k_tiles_per_split * BLOCK_K
    k_end = tl.minimum(K, k_begin + k_tiles_per_split * BLOCK_K)
    w_ptrs = w_ptr + w_rows[:, None] * stride_wn + (k_begin + rk)[None, :]  # [BN, BK]
    x_ptrs = x_ptr + x_rows[:, None] * stride_xm + (k_begin + rk)[None, :]  # [BM, BK]

    acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
    for k in range(k_begin, k_end, BLOCK_K):
        if EVEN_K:
            w = tl.load(w_ptrs, eviction_policy="evict_first")  # streamed once
            xt = tl.load(x_ptrs, eviction_policy="evict_last")  # reread by every N tile
        else:
            k_ok = (k + rk) < K
            w = tl.load(w_ptrs, mask=k_ok[None, :], other=0.0, eviction_policy="evict_first")
            xt = tl.load(x_ptrs, mask=k_ok[None, :], other=0.0, eviction_policy="evict_last")
        if FP32_DOT:
            acc += tl.dot(w.to(tl.float32), tl.trans(xt.to(tl.float32)), input_precision="ieee")
        else:
            acc += tl.dot(w, tl.trans(xt))
        w_ptrs += BLOCK_K
        x_ptrs += BLOCK_K

    y_mask = (rn < N)[:, None] & (rm < M)[None, :]  # [BN, BM]
    y_ptrs = y_ptr + rm[None, :] * stride_ym + rn[:, None]  # [BN, BM] (y is [M, N])
    if SPLIT_K == 1:
        if HAS_BIAS:
            acc += tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[:, None]
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=y_mask)
    else:
        tile = tl.arange(0, BLOCK_N)[:, None] * BLOCK_M + rm[None, :]  # [BN, BM] offsets in one slot
        ws_tile = ws_ptr + pid_n.to(tl.int64) * (SPLIT_K * BLOCK_N * BLOCK_M)
        tl.store(ws_tile + s * (BLOCK_N * BLOCK_M) + tile, acc)
        tl.debug_barrier()  # every thread's partial is written before the counter moves
        if tl.atomic_add(cnt_ptr + pid_n, 1, sem="acq_rel") == SPLIT_K - 1:  # the last to arrive
            total = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
            for ss in tl.static_range(SPLIT_K):  # fixed order: the sum does not depend on who is last
                # (unrolled, so the loads issue together; reads bypass L1: other programs wrote them)
                total += tl.load(ws_tile + ss * (BLOCK_N * BLOCK_M) + tile, cache_modifier=".cg")
            if HAS_BIAS:
                total += tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[:, None]
            tl.store(y_ptrs, total.to(y_ptr.dtype.element_ty), mask=y_mask)
            tl.atomic_xchg(cnt_ptr + pid_n, 0)  # ready for the next call / graph replay


class DeviceFacts(NamedTuple):
    """What the launch heuristic needs of a GPU."""

    sm_count: int
    smem_bytes: int  # shared memory one program may use (opt-in maximum)


H100 = DeviceFacts(132, 227 * 1024)


@lru_cache(maxsize=None)
def _cuda_facts(index: int) -> DeviceFacts:
    props = torch.cuda.get_device_properties(index)
    smem = getattr(props, "shared_memory_per_block_optin", 0) or (227 if props.major >= 9 else 99) * 1024
    return DeviceFacts(props.multi_processor_count, smem)


def device_facts(device: torch.device) -> DeviceFacts:
    """SM count and shared memory of ``device`` (cached per device index); an H100's off CUDA (interpreter)."""
    if device.type != "cuda":
        return H100
    return _cuda_facts(device.index if device.index is not None else torch.cuda.current_device())


def fill_splits(N: int, K: int, block_n: int, block_k: int, programs: int) -> int:
    """K splits (a power of two, <= 16) that bring the grid to >= ``programs`` programs, as long
    as each split keeps >= 16 K tiles (a split costs its tile a merge and a pipeline fill: 2048 x
    2048 ran 2-4 % slower with 2 splits of 8 K tiles of 128 than unsplit)."""
    tiles, k_tiles, split = triton.cdiv(N, block_n), triton.cdiv(K, block_k), 1
    while tiles * split < programs and k_tiles // (2 * split) >= 16 and split < 16:
        split *= 2
    return split


def skinny_config(M: int, N: int, K: int, sm_count: int, elem_size: int = 2,
                  smem_bytes: int = H100.smem_bytes) -> SkinnyConfig:
    """Default launch for ``[M, K] x [N, K]^T`` (``elem_size`` bytes per element) on a GPU of
    ``sm_count`` multiprocessors and ``smem_bytes`` of shared memory per program.

    From ``experiments/gemm_check.py --grid`` on an H100 at LLaDA-8B / LLaDA2.0-mini shapes:
    the weight stream wants many bytes in flight per program more than many programs. So: 64 W
    rows per tile (the smallest wgmma M; 32 or 128 were no better), K tiles of 128 (64 once
    M > 64, as the x tile grows with M), and as many pipeline stages (<= 5) as shared memory
    holds; one program per SM suffices. K is split only for grids short of about a third of the
    SMs (two thirds for M > 64, where each program also does 2-4x the MMA work): at M = 32
    splitting a 64-tile grid (4096 x 4096) cost 4 % per doubling, while a 32-tile grid (2048 x
    5120) gained 8 % from 4 splits. A grid larger than the SM count keeps stages to half the
    shared memory: 160 tiles of 5 stages (one program per SM) ran 23 % slower than of 4 (two).
    (The K split is chosen before BLOCK_K shrinks for a small shared memory: splits may then
    keep fewer than 16 K tiles, which is only slower.)
    """
    block_m = max(16, next_pow2(M))
    block_n = 64
    block_k = min(64 if block_m > 64 else 128, max(16, next_pow2(K)))
    programs = sm_count * max(block_m, 64) // 192
    split = fill_splits(N, K, block_n, block_k, programs)
    # One program per SM may take all shared memory; a grid of more than one such wave gets
    # half of it, so two programs share an SM and no short second wave runs alone.
    budget = smem_bytes if triton.cdiv(N, block_n) * split <= sm_count else smem_bytes // 2
    budget -= 4 * 1024  # headroom for the epilogue's layout conversions
    while block_k > 16 and 2 * (block_n + block_m) * block_k * elem_size > budget:
        block_k //= 2
    stages = max(2, min(5, budget // ((block_n + block_m) * block_k * elem_size)))
    return SkinnyConfig(block_n, block_k, split, 4, stages)


def supports(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`skinny_linear` takes these operands (else use ``F.linear``)."""
    if weight.dim() != 2 or x.dim() < 1 or x.shape[-1] != weight.shape[1]:
        return False
    if x.dtype not in _DTYPES or weight.dtype != x.dtype or x.device != weight.device:
        return False
    if not (x.is_cuda or is_interpreting()):
        return False
    k = weight.shape[1]
    m = x.numel() // k if k else 0
    return 1 <= m <= MAX_M and k % 16 == 0 and k > 0 and x.stride(-1) == 1 and weight.stride(1) == 1


def _launch(x2: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, y: torch.Tensor, cfg: SkinnyConfig,
            counters: torch.Tensor | None):
    """Launch on ``x2: [M, K]`` into ``y: [M, N]``; returns Triton's compiled kernel (registers, shared memory)."""
    (m, k), n = x2.shape, weight.shape[0]
    block_m = max(16, next_pow2(m))
    k_tiles = triton.cdiv(k, cfg.block_k)
    per_split = triton.cdiv(k_tiles, max(1, min(cfg.split_k, k_tiles)))
    splits = triton.cdiv(k_tiles, per_split)  # every split has >= 1 K tile
    tiles = triton.cdiv(n, cfg.block_n)
    if splits > 1:
        ws = torch.empty(tiles * splits * cfg.block_n * block_m, dtype=torch.float32, device=x2.device)
        if counters is None:
            counters = torch.zeros(tiles, dtype=torch.int32, device=x2.device)
        elif counters.dtype != torch.int32 or counters.numel() < tiles or counters.device != x2.device:
            raise ValueError(f"skinny_linear: counters need >= {tiles} int32 entries on {x2.device}")
    else:  # placeholders, never touched
        ws, counters = y, y
    return _skinny_gemm_kernel[(tiles, splits)](
        x2, weight, bias if bias is not None else y, y, ws, counters,
        m, n, k, x2.stride(0), weight.stride(0), y.stride(0), per_split,
        BLOCK_M=block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, SPLIT_K=splits,
        HAS_BIAS=bias is not None, EVEN_K=k % cfg.block_k == 0,
        FP32_DOT=is_interpreting() or x2.dtype == torch.float32,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )


def skinny_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    config: tuple[int, int, int, int, int] | None = None,
    counters: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x: [..., K]``, ``weight: [N, K]``, ``bias: [N]`` or None -> ``[..., N]`` (x's dtype); as ``F.linear``.

    ``config``: ``(BLOCK_N, BLOCK_K, SPLIT_K, num_warps, num_stages)`` (default
    :func:`skinny_config`); SPLIT_K is capped so that no split is empty. ``counters``: a zeroed
    int32 buffer of at least ``cdiv(N, BLOCK_N)`` entries that the kernel leaves zeroed (see the
    module docstring); None allocates zeros per call when K is split.
    """
    if not supports(x, weight):
        raise ValueError(f"skinny_linear: unsupported x {tuple(x.shape)} {x.dtype} / weight "
                         f"{tuple(weight.shape)} {weight.dtype} (M <= {MAX_M}, K % 16 == 0, one dtype)")
    n, k = weight.shape
    if bias is not None and (bias.shape != (n,) or bias.stride(0) != 1):
        raise ValueError(f"skinny_linear: bias {tuple(bias.shape)} does not fit N={n}")
    x2 = x.reshape(-1, k)  # [M, K]
    if x2.stride(1) != 1:
        x2 = x2.contiguous()
    m = x2.shape[0]
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)  # [M, N]
    if config is None:
        facts = device_facts(x.device)
        config = skinny_config(m, n, k, facts.sm_count, x.element_size(), facts.smem_bytes)
    cfg = SkinnyConfig(*config)
    for v in (cfg.block_n, cfg.block_k):
        if v < 16 or v & (v - 1):
            raise ValueError(f"skinny_linear: BLOCK_N / BLOCK_K must be powers of two >= 16, got {cfg}")
    _launch(x2, weight, bias, y, cfg, counters)
    return y.reshape(*x.shape[:-1], n)
