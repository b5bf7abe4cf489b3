"""Sweep the fused-MoE launch tiles on a GPU at LLaDA2.0-mini shapes (256 experts, top-8, H=2048, I=512).

``python experiments/moe_tune.py [--tokens 32,128] [--block-ms 64,128] [--fp8]``: for each
token count (and tokens-per-block ``BLOCK_M``; default: the heuristic's), times the gate/up and
down kernels (whole ``fused_moe`` call, CUDA events, median, weights rotated over several copies
so repeats do not hit L2) for each tile ``(BLOCK_N, BLOCK_K, warps, stages)`` of one kernel while
the other keeps its default; prints ms, the effective bandwidth over the selected experts'
weights, the achieved TFLOP/s of the expert GEMMs (``2 * T * top_k * 3 * I * H`` FLOPs; % of
``BF16_PEAK_TFLOPS``) and the error against the default. ``--fp8``: the same with FP8 experts
(128 x 128 scale tiles), bandwidth counted at one byte per weight. ``--swaps 0,1``: everything for
each setting of ``fused_moe(swap=...)`` (transposed products, the weight tile on the MMA's left).
``--graph``: GPU time from CUDA graphs of 20 calls (no launch gaps, as in the engine) instead of
one call between events.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys

import torch

from diffulex.kernels.triton.fused_moe import fused_moe

E, K, H, I = 256, 8, 2048, 512
# Dense bf16 tensor-core peak of the H200 used in issue 18 (~790 TFLOP/s); the SXM data sheet
# states 989 without sparsity, which no measured GEMM here reaches.
BF16_PEAK_TFLOPS = 790.0


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
    ap.add_argument("--block-ms", default="", help="comma-separated BLOCK_M values (default: the heuristic's)")
    ap.add_argument("--fp8", action="store_true", help="FP8 experts (W8A16, 128 x 128 scale tiles)")
    ap.add_argument("--n-major", action="store_true", help="also time each BLOCK_M's default with the column-tile-major "
                    "launch order (fused_moe(n_major=True))")
    ap.add_argument("--fp8-scales", default="weights,products,fp16", help="with --fp8: comma-separated fused_moe fp8_scale modes "
                    "(weights, products), each timed")
    ap.add_argument("--sweep-scale", default=None, help="with --fp8: the fp8_scale of the default and the tile sweep")
    ap.add_argument("--no-sweep", dest="sweep", action="store_false", help="defaults only, no tile sweep")
    ap.add_argument("--grid", choices=["small", "large"], default=None,
                    help="tile grid (default: small below 1,024 tokens, large from there)")
    ap.add_argument("--swaps", default="", help="comma-separated fused_moe swap settings (0, 1); default: its heuristic")
    ap.add_argument("--graph", action="store_true", help="time CUDA graphs of 20 calls (kernel_check.bench_graph)")
    args = ap.parse_args()
    timer = bench
    if args.graph:
        from kernel_check import bench_graph

        calls = itertools.count()
        timer = lambda fn: bench_graph(lambda: fn(next(calls)))  # noqa: E731
    dev, dt = torch.device("cuda"), torch.bfloat16
    copies = 3  # 3 x 1.6 GB of experts: beyond L2
    w13s = [torch.randn(E, 2 * I, H, device=dev, dtype=dt) * H ** -0.5 for _ in range(copies)]
    w2s = [torch.randn(E, H, I, device=dev, dtype=dt) * I ** -0.5 for _ in range(copies)]
    fp8 = [{} for _ in range(copies)]
    if args.fp8:
        from diffulex.quantization import quantize_fp8

        def quantized(stack):
            q, s = zip(*(quantize_fp8(stack[e], (128, 128)) for e in range(E)))
            return torch.stack(q), torch.stack(s)

        for c in range(copies):
            (w13s[c], s13), (w2s[c], s2) = quantized(w13s[c]), quantized(w2s[c])
            fp8[c] = {"w13_scale": s13, "w2_scale": s2, "block": (128, 128)}
    wbytes = 1 if args.fp8 else 2
    small = list(itertools.product((32, 64, 128), (64, 128, 256), (4, 8), (3, 4)))
    large = list(itertools.product((64, 128, 256), (32, 64, 128), (4, 8), (3, 4)))
    block_ms = [int(v) for v in args.block_ms.split(",") if v] or [None]
    for t in (int(v) for v in args.tokens.split(",")):
        grid = {"small": small, "large": large}[args.grid or ("large" if t >= 1024 else "small")]
        x = torch.randn(t, H, device=dev, dtype=dt)
        ids = torch.rand(t, E, device=dev).topk(K, dim=-1).indices
        w = torch.rand(t, K, device=dev)
        u = ids.unique().numel()
        nbytes = u * 3 * I * H * wbytes
        flops = 2 * t * K * 3 * I * H

        def rate(ms: float) -> str:
            tflops = flops / ms / 1e9
            return f"{nbytes / ms / 1e6:.0f} GB/s, {tflops:.0f} TFLOP/s = {100 * tflops / BF16_PEAK_TFLOPS:.0f} % of peak"

        ref = fused_moe(x, ids, w, w13s[0], w2s[0], **fp8[0])
        swaps = [bool(int(v)) for v in args.swaps.split(",") if v] or [None]
        for block_m, swap in itertools.product(block_ms, swaps):
            def call(i, tiles=None, n_major=None):
                return fused_moe(x, ids, w, w13s[i % copies], w2s[i % copies], block_m=block_m, tiles=tiles,
                                 n_major=n_major, swap=swap, fp8_scale=args.sweep_scale, **fp8[i % copies])

            base = timer(call)
            print(f"T={t} U={u} BLOCK_M={block_m or 'auto'} swap={swap}{' fp8' if args.fp8 else ''}: default "
                  f"{base:.3f} ms ({rate(base)})", flush=True)
            if args.fp8 and "," in args.fp8_scales:
                for mode in args.fp8_scales.split(","):
                    out = fused_moe(x, ids, w, w13s[0], w2s[0], block_m=block_m, fp8_scale=mode, swap=swap,
                                    **fp8[0])
                    err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
                    ms = timer(lambda i: fused_moe(x, ids, w, w13s[i % copies], w2s[i % copies], block_m=block_m,
                                                   fp8_scale=mode, swap=swap, **fp8[i % copies]))
                    print(f"  fp8_scale={mode}: {ms:.3f} ms ({rate(ms)}), rel err {err:.1e}", flush=True)
            if args.n_major:
                for order in (False, True):
                    out = call(0, n_major=order)
                    err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
                    ms = timer(lambda i: call(i, n_major=order))
                    print(f"  n_major={order}: {ms:.3f} ms ({rate(ms)}), rel err {err:.1e}", flush=True)
            for which in ("gate_up", "down") if args.sweep else ():
                rows = []
                for tile in grid:
                    try:
                        out = call(0, {which: tile})
                        err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
                        ms = timer(lambda i: call(i, {which: tile}))
                    except Exception as exc:  # a tile that does not compile or fit
                        print(f"  {which} {tile}: {type(exc).__name__}", flush=True)
                        continue
                    rows.append((ms, tile, err))
                rows.sort()
                for ms, tile, err in rows[:5]:
                    print(f"  {which:7s} BN,BK,warps,stages={tile}: {ms:.3f} ms ({rate(ms)}), rel err {err:.1e}",
                          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
