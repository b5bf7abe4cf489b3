"""Sweep the fused-MoE launch tiles on a GPU at LLaDA2.0-mini shapes (256 experts, top-8, H=2048, I=512).

``python experiments/moe_tune.py [--tokens 32,128]``: for each token count, times the
gate/up and down kernels (whole ``fused_moe`` call, CUDA events, median, weights rotated
over several copies so repeats do not hit L2) for each tile ``(BLOCK_N, BLOCK_K, warps,
stages)`` of one kernel while the other keeps its default; prints ms, the effective
bandwidth over the selected experts' weights and the error against the default.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys

import torch

from diffulex.kernels.triton.fused_moe import fused_moe

E, K, H, I = 256, 8, 2048, 512


def bench(fn, iters: int = 30) -> float:
    for _ in range(5):
        fn(0)
    torch.cuda.synchronize()
    times = []
    for i in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn(i)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", default="32,128")
    args = ap.parse_args()
    dev, dt = torch.device("cuda"), torch.bfloat16
    copies = 3  # 3 x 1.6 GB of experts: beyond L2
    w13s = [torch.randn(E, 2 * I, H, device=dev, dtype=dt) * H ** -0.5 for _ in range(copies)]
    w2s = [torch.randn(E, H, I, device=dev, dtype=dt) * I ** -0.5 for _ in range(copies)]
    grid = list(itertools.product((32, 64, 128), (64, 128, 256), (4, 8), (3, 4)))
    for t in (int(v) for v in args.tokens.split(",")):
        x = torch.randn(t, H, device=dev, dtype=dt)
        ids = torch.rand(t, E, device=dev).topk(K, dim=-1).indices
        w = torch.rand(t, K, device=dev)
        u = ids.unique().numel()
        nbytes = u * 3 * I * H * 2
        ref = fused_moe(x, ids, w, w13s[0], w2s[0])
        base = bench(lambda i: fused_moe(x, ids, w, w13s[i % copies], w2s[i % copies]))
        print(f"T={t} U={u}: default {base:.3f} ms ({nbytes / base / 1e6:.0f} GB/s)", flush=True)
        for which in ("gate_up", "down"):
            rows = []
            for tile in grid:
                try:
                    out = fused_moe(x, ids, w, w13s[0], w2s[0], tiles={which: tile})
                    err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
                    ms = bench(lambda i: fused_moe(x, ids, w, w13s[i % copies], w2s[i % copies], tiles={which: tile}))
                except Exception as exc:  # a tile that does not compile or fit
                    print(f"  {which} {tile}: {type(exc).__name__}", flush=True)
                    continue
                rows.append((ms, tile, err))
            rows.sort()
            for ms, tile, err in rows[:5]:
                print(f"  {which:7s} BN,BK,warps,stages={tile}: {ms:.3f} ms ({nbytes / ms / 1e6:.0f} GB/s), "
                      f"rel err {err:.1e}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
