"""Time the small kernels around the fused-MoE GEMMs on a GPU at LLaDA2.0-mini decode sizes.

``python experiments/moe_small_tune.py [--tokens 32,64,512]``: graph-timed (as the engine runs
them), per token count: the group-limited top-k (256 experts, top-8 + the shared slot) by warps
per program, the one-program ``moe_align`` by warps, and the sum of the ``[T, 9, H]``
per-assignment outputs (``sum_assignments``) against torch's ``.sum(1)``.
"""

from __future__ import annotations

import argparse
import sys

import torch

from kernel_check import bench_graph  # graph-timed, as the engine runs

from diffulex.kernels.triton._runtime import next_pow2
from diffulex.kernels.triton.fused_moe import sum_assignments
from diffulex.kernels.triton.moe_align import ONE_PROGRAM_MAX, moe_align
from diffulex.kernels.triton.moe_router import group_limited_topk
from diffulex.kernels.triton.router_gemm import router_logit_partials

E, H, TOP_K, N_GROUP, TOPK_GROUP, SCALE = 256, 2048, 8, 8, 4, 2.5


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", default="32,64,512")
    args = ap.parse_args()
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    w = torch.randn(E, H, device=dev, generator=gen) * H ** -0.5
    bias = torch.randn(E, device=dev, generator=gen) * 0.1
    for t in (int(v) for v in args.tokens.split(",")):
        x = torch.randn(t, H, device=dev, generator=gen).to(torch.bfloat16)
        part = router_logit_partials(x, w)
        ref = group_limited_topk(part, bias, TOP_K, N_GROUP, TOPK_GROUP, SCALE, 1)
        cells = []
        for warps in (1, 2, 4, 8):
            out = group_limited_topk(part, bias, TOP_K, N_GROUP, TOPK_GROUP, SCALE, 1, num_warps=warps)
            same = torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])
            us = bench_graph(lambda: group_limited_topk(part, bias, TOP_K, N_GROUP, TOPK_GROUP, SCALE, 1,
                                                        num_warps=warps)) * 1e3
            cells.append(f"{warps}w {us:.1f} us{'' if same else ' DIFFERS'}")
        print(f"T={t} top-k: " + ", ".join(cells), flush=True)
        ids = ref[0]
        block_m = min(64, max(16, next_pow2(int(2 * ids.numel() / (E + 1)))))  # as fused_moe picks it
        if ids.numel() <= ONE_PROGRAM_MAX:
            base = moe_align(ids, E + 1, block_m)
            cells = []
            for warps in (2, 4, 8, 16):
                out = moe_align(ids, E + 1, block_m, num_warps=warps)
                # order: grouped, its order within an expert may vary (atomics); surplus blocks carry only
                # their expert, so blk_row0 / blk_row_end are compared on the blocks that have rows.
                real = base[1] < E + 1
                same = (torch.equal(out[0].sort().values, base[0].sort().values) and torch.equal(out[1], base[1])
                        and torch.equal(out[2][real], base[2][real]) and torch.equal(out[3][real], base[3][real])
                        and torch.equal(out[4], base[4]))
                us = bench_graph(lambda: moe_align(ids, E + 1, block_m, num_warps=warps)) * 1e3
                cells.append(f"{warps}w {us:.1f} us{'' if same else ' DIFFERS'}")
            print(f"T={t} moe_align one program (block_m {block_m}): " + ", ".join(cells), flush=True)
        per_assign = torch.randn(t, TOP_K + 1, H, device=dev, generator=gen).to(torch.bfloat16)
        err = (sum_assignments(per_assign).float() - per_assign.sum(1).float()).abs().max().item()
        t_torch = bench_graph(lambda: sum_assignments(per_assign, torch_sum=True)) * 1e3
        t_tri = bench_graph(lambda: sum_assignments(per_assign)) * 1e3
        print(f"T={t} k-sum [T, 9, H]: torch {t_torch:.1f} us, sum_assignments {t_tri:.1f} us, max|diff| {err:.1e}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
