"""Group a step's (token, expert) assignments by local expert for the fused MoE: one or two launches.

``moe_align_torch`` is the plain-PyTorch formulation (a stable sort plus ~15 small ops);
``moe_align`` computes the same block table with two Triton launches: a one-program plan
kernel (histogram of the expert ids, prefix sums) and a fill kernel whose programs each place
a slice of the assignments at their expert's next free row (an atomic counter per expert)
and fill a slice of the block table. Up to ``ONE_PROGRAM_MAX`` assignments (a decode step of
a few sequences) one program does both (``_moe_align_one_kernel``), one launch fewer per MoE
layer. The order of
assignments *within* one expert may differ from the stable sort; nothing depends on it (each
row of the grouped GEMM is computed independently and written back by assignment index).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from diffulex.kernels.triton._runtime import next_pow2, pdl_enter, pdl_kwargs


def moe_align_torch(topk_ids: torch.Tensor, num_local: int, block_m: int, expert_start: int = 0):
    """Reference: sort assignments by local expert (non-local last) and cut each run into ``block_m`` rows.

    ``topk_ids: [T, k]`` -> ``order [A]`` (flat assignment index, by expert, non-local last),
    ``blk_expert, blk_row0, blk_row_end: [cdiv(A, block_m) + min(E, A)]`` (``blk_expert ==
    num_local`` marks a surplus block), and ``counts [E]`` tokens per local expert. No host sync.
    """
    flat = topk_ids.flatten() - expert_start  # [A]
    n_assign = flat.shape[0]
    key = torch.where((flat >= 0) & (flat < num_local), flat, num_local)  # [A]
    order = torch.sort(key, stable=True).indices  # [A]
    # scatter_add, not bincount: bincount reads its max back to the host on CUDA.
    counts = torch.zeros(num_local + 1, dtype=torch.long, device=flat.device)
    counts = counts.scatter_add_(0, key, torch.ones_like(key))[:num_local]  # [E]
    starts = counts.cumsum(0) - counts  # [E] first sorted row of each expert
    n_blocks = (counts + block_m - 1) // block_m  # [E]
    ends = n_blocks.cumsum(0)  # [E]
    b = torch.arange(triton.cdiv(n_assign, block_m) + min(num_local, n_assign), device=flat.device)  # [B]
    blk_expert = torch.searchsorted(ends, b, right=True)  # [B] in [0, E]
    e = blk_expert.clamp(max=num_local - 1)
    blk_row0 = starts[e] + (b - (ends - n_blocks)[e]) * block_m  # [B]
    blk_row_end = starts[e] + counts[e]  # [B]
    return order, blk_expert, blk_row0, blk_row_end, counts


@triton.jit
def _expert_key(ids_ptr, offs, mask, expert_start, NUM_LOCAL: tl.constexpr, E_PAD: tl.constexpr):
    """Local expert of each assignment; NUM_LOCAL for another rank's expert, E_PAD - 1 for padding lanes."""
    e = tl.load(ids_ptr + offs, mask=mask, other=0).to(tl.int32) - expert_start
    key = tl.where((e >= 0) & (e < NUM_LOCAL), e, NUM_LOCAL)
    return tl.where(mask, key, E_PAD - 1)


@triton.jit
def _moe_plan_kernel(ids_ptr, scratch_ptr, counts_ptr, n_assign, expert_start,
                     NUM_LOCAL: tl.constexpr, E_PAD: tl.constexpr, CHUNK: tl.constexpr, BLOCK_M: tl.constexpr,
                     PDL: tl.constexpr):
    """One program: per-bin counts, first rows and row-block ranges -> ``scratch [4, E_PAD]`` int32
    (0: the scatter cursor = first row, 1: first row, 2: end of the expert's row blocks, 3: its block count)."""
    pdl_enter(PDL)
    counts = tl.zeros([E_PAD], dtype=tl.int32)
    for c0 in range(0, n_assign, CHUNK):
        offs = c0 + tl.arange(0, CHUNK)
        counts += tl.histogram(_expert_key(ids_ptr, offs, offs < n_assign, expert_start, NUM_LOCAL, E_PAD), E_PAD)
    bins = tl.arange(0, E_PAD)
    counts = tl.where(bins <= NUM_LOCAL, counts, 0)  # drop the padding bin
    starts = tl.cumsum(counts, axis=0) - counts  # first sorted row per bin, the non-local bin last
    local = bins < NUM_LOCAL
    nb = tl.where(local, (counts + BLOCK_M - 1) // BLOCK_M, 0)  # row blocks per expert
    tl.store(scratch_ptr + bins, starts)
    tl.store(scratch_ptr + E_PAD + bins, starts)
    tl.store(scratch_ptr + 2 * E_PAD + bins, tl.where(local, tl.cumsum(nb, axis=0), 1 << 30))
    tl.store(scratch_ptr + 3 * E_PAD + bins, nb)
    tl.store(counts_ptr + bins, counts.to(tl.int64), mask=local)


@triton.jit
def _moe_fill_kernel(ids_ptr, scratch_ptr, counts_ptr, order_ptr, blk_expert_ptr, blk_row0_ptr, blk_row_end_ptr,
                     n_assign, n_blocks_total, expert_start,
                     NUM_LOCAL: tl.constexpr, E_PAD: tl.constexpr, BLOCK: tl.constexpr, B_CHUNK: tl.constexpr,
                     BLOCK_M: tl.constexpr, PDL: tl.constexpr):
    """Each program places ``BLOCK`` assignments (atomic cursor per expert) and fills ``B_CHUNK`` block-table rows."""
    pdl_enter(PDL)
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_assign
    key = _expert_key(ids_ptr, offs, mask, expert_start, NUM_LOCAL, E_PAD)
    row = tl.atomic_add(scratch_ptr + key, 1, mask=mask)  # this assignment's row in its expert's run
    tl.store(order_ptr + row, offs.to(tl.int64), mask=mask)
    b = pid * B_CHUNK + tl.arange(0, B_CHUNK)  # [BC]
    ok = b < n_blocks_total
    bins = tl.arange(0, E_PAD)
    ends = tl.load(scratch_ptr + 2 * E_PAD + bins)  # [E_PAD], non-local bins hold a huge end
    e = tl.sum((ends[None, :] <= b[:, None]).to(tl.int32), axis=1)  # searchsorted(ends, b, right=True)
    ec = tl.minimum(e, NUM_LOCAL - 1)
    start_e = tl.load(scratch_ptr + E_PAD + ec)
    first_blk = tl.load(scratch_ptr + 2 * E_PAD + ec) - tl.load(scratch_ptr + 3 * E_PAD + ec)
    count_e = tl.load(counts_ptr + ec).to(tl.int32)
    tl.store(blk_expert_ptr + b, e.to(tl.int64), mask=ok)
    tl.store(blk_row0_ptr + b, (start_e + (b - first_blk) * BLOCK_M).to(tl.int64), mask=ok)
    tl.store(blk_row_end_ptr + b, (start_e + count_e).to(tl.int64), mask=ok)


@triton.jit
def _moe_align_one_kernel(ids_ptr, scratch_ptr, counts_ptr, order_ptr, blk_expert_ptr, blk_row0_ptr, blk_row_end_ptr,
                          n_assign, n_blocks_total, expert_start,
                          NUM_LOCAL: tl.constexpr, E_PAD: tl.constexpr, A_PAD: tl.constexpr, BLOCK_M: tl.constexpr,
                          B_CHUNK: tl.constexpr, PDL: tl.constexpr):
    """All of ``moe_align`` in one program (``n_assign <= A_PAD``): histogram, prefix sums, placement
    (atomic cursor per expert in ``scratch [E_PAD]``), then each expert writes its own block rows."""
    pdl_enter(PDL)
    offs = tl.arange(0, A_PAD)
    mask = offs < n_assign
    key = _expert_key(ids_ptr, offs, mask, expert_start, NUM_LOCAL, E_PAD)  # [A_PAD]
    bins = tl.arange(0, E_PAD)
    counts = tl.where(bins <= NUM_LOCAL, tl.histogram(key, E_PAD), 0)  # the padding bin dropped
    starts = tl.cumsum(counts, axis=0) - counts  # [E_PAD] first sorted row per bin
    local = bins < NUM_LOCAL
    nb = tl.where(local, (counts + BLOCK_M - 1) // BLOCK_M, 0)  # row blocks per expert
    first = tl.cumsum(nb, axis=0) - nb  # [E_PAD] first block of each expert
    tl.store(scratch_ptr + bins, starts)
    tl.store(counts_ptr + bins, counts.to(tl.int64), mask=local)
    tl.debug_barrier()  # the cursors are written before any thread claims a row
    row = tl.atomic_add(scratch_ptr + key, 1, mask=mask)
    tl.store(order_ptr + row, offs.to(tl.int64), mask=mask)
    for j in range(0, tl.max(nb, 0)):  # the j-th block of every expert that has one
        ok = j < nb
        tl.store(blk_expert_ptr + first + j, bins.to(tl.int64), mask=ok)
        tl.store(blk_row0_ptr + first + j, (starts + j * BLOCK_M).to(tl.int64), mask=ok)
        tl.store(blk_row_end_ptr + first + j, (starts + counts).to(tl.int64), mask=ok)
    for b0 in range(tl.sum(nb, 0), n_blocks_total, B_CHUNK):  # surplus blocks: no expert
        b = b0 + tl.arange(0, B_CHUNK)
        tl.store(blk_expert_ptr + b, tl.full([B_CHUNK], NUM_LOCAL, tl.int64), mask=b < n_blocks_total)


ONE_PROGRAM_MAX = 1024  # assignments up to which one program plans and places them


ONE_PROGRAM_WARPS = 16  # H100, 256+1 experts (experiments/moe_small_tune.py): 5.4 us at 32 tokens vs 6.3 with 8


def moe_align(topk_ids: torch.Tensor, num_local: int, block_m: int, expert_start: int = 0,
              one_program: bool | None = None, num_warps: int = ONE_PROGRAM_WARPS):
    """Same outputs as :func:`moe_align_torch` (``order`` grouped, not necessarily stable within an expert;
    surplus blocks carry only ``blk_expert == num_local``). ``one_program``: force (True, needs
    ``<= ONE_PROGRAM_MAX`` assignments) or forbid the one-launch path; None picks by size.
    ``num_warps``: of the one program (tuning)."""
    ids = topk_ids.reshape(-1)
    if not ids.is_contiguous():
        ids = ids.contiguous()
    n_assign = ids.shape[0]
    dev = ids.device
    n_blocks_total = triton.cdiv(n_assign, block_m) + min(num_local, n_assign)
    e_pad = next_pow2(num_local + 2)  # bins: local experts, the non-local bin, the padding bin
    scratch = torch.empty(4 * e_pad, dtype=torch.int32, device=dev)
    counts = torch.empty(num_local, dtype=torch.long, device=dev)
    order = torch.empty(n_assign, dtype=torch.long, device=dev)
    blk_expert, blk_row0, blk_row_end = (torch.empty(n_blocks_total, dtype=torch.long, device=dev) for _ in range(3))
    if n_assign == 0:
        return order, blk_expert, blk_row0, blk_row_end, counts.zero_()
    if one_program is None:
        one_program = n_assign <= ONE_PROGRAM_MAX
    if one_program:
        if n_assign > ONE_PROGRAM_MAX:
            raise ValueError(f"moe_align: {n_assign} assignments exceed the one-program limit {ONE_PROGRAM_MAX}")
        _moe_align_one_kernel[(1,)](ids, scratch, counts, order, blk_expert, blk_row0, blk_row_end, n_assign,
                                    n_blocks_total, expert_start, NUM_LOCAL=num_local, E_PAD=e_pad,
                                    A_PAD=max(16, next_pow2(n_assign)), BLOCK_M=block_m, B_CHUNK=256,
                                    num_warps=num_warps, **pdl_kwargs(dev))
        return order, blk_expert, blk_row0, blk_row_end, counts
    _moe_plan_kernel[(1,)](ids, scratch, counts, n_assign, expert_start, NUM_LOCAL=num_local, E_PAD=e_pad,
                           CHUNK=1024, BLOCK_M=block_m, num_warps=8, **pdl_kwargs(dev))
    block, b_chunk = 256, 16
    grid = max(triton.cdiv(n_assign, block), triton.cdiv(n_blocks_total, b_chunk))
    _moe_fill_kernel[(grid,)](ids, scratch, counts, order, blk_expert, blk_row0, blk_row_end, n_assign,
                              n_blocks_total, expert_start, NUM_LOCAL=num_local, E_PAD=e_pad, BLOCK=block,
                              B_CHUNK=b_chunk, BLOCK_M=block_m, num_warps=4, **pdl_kwargs(dev))
    return order, blk_expert, blk_row0, blk_row_end, counts
