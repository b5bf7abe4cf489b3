"""Sweep the FP8 (W8A16) linear's launch on a GPU at LLaDA-8B / LLaDA2.0-mini dense shapes.

``python experiments/fp8_linear_tune.py [--ms 1,32] [--top 4]``: for each weight shape ``[N, K]``
and token count ``M``, times ``fp8_linear`` (CUDA graphs of 20 calls, weights rotated over
enough copies to exceed L2) with the heuristic launch and with each ``(BLOCK_N, BLOCK_K, warps,
stages, splits)`` of a small grid (at ``M <= 64`` each also swapped: ``y^T = w x^T``, the weight tile as the
MMA's left operand; ``--swaps``), beside bf16 ``F.linear`` on the same shape (``kernel_check.bench_graph``);
prints ms and the
GB/s of the weight bytes (1 per FP8 value + scales; 2 per bf16 value), best first.
"""

from __future__ import annotations

import argparse
import itertools
import sys

import torch
import torch.nn.functional as F

from diffulex.kernels.triton.fp8_linear import SCALE_MODES, fp8_linear, fp8_tiles
from kernel_check import bench_graph
from diffulex.quantization import quantize_fp8

SHAPES = {  # name: (N, K)
    "8b qkv": (3 * 4096, 4096), "8b o": (4096, 4096), "8b gate_up": (2 * 12288, 4096), "8b down": (4096, 12288),
    "mini qkv": (2048 + 2 * 512, 2048), "mini dense gate_up": (2 * 5120, 2048),
}


def graph_ms(fn, copies: int) -> float:
    """GPU ms of one ``fn(i)``, the captured calls cycling through the ``copies`` weight copies."""
    calls = itertools.count()
    return bench_graph(lambda: fn(next(calls) % copies))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ms", default="1,32,2048")
    ap.add_argument("--shapes", default="8b qkv,8b gate_up,8b down,mini qkv")
    ap.add_argument("--top", type=int, default=4)
    ap.add_argument("--scale-mode", default=None, help="fp8_linear scale_mode of the tile sweep (default: its default)")
    ap.add_argument("--swaps", default="0,1", help="comma-separated swap settings swept at M <= 64 (0 off, 1 on)")
    args = ap.parse_args()
    dev = torch.device("cuda")
    swaps = [bool(int(v)) for v in args.swaps.split(",")]
    small = [((None, bn, bk), w, st, sp, sw) for bn, bk, w, st, sp, sw in
             itertools.product((32, 64, 128), (128, 256), (4,), (3, 4), (None, 4), swaps)]
    large = [(t, w, st, 1, False) for t, w, st in itertools.product(
        ((64, 128, 64), (128, 128, 64), (128, 256, 64), (64, 256, 64), (128, 128, 128)), (4, 8), (3, 4))]
    for name in args.shapes.split(","):
        n, k = SHAPES[name]
        copies = max(2, int(200e6 // (n * k)) + 1)
        ws = [torch.randn(n, k, device=dev, dtype=torch.bfloat16) * k ** -0.5 for _ in range(copies)]
        qs = [quantize_fp8(w, (128, 128)) for w in ws]
        fp8_bytes = n * k + qs[0][1].numel() * 4
        for m in (int(v) for v in args.ms.split(",")):
            x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
            bf16 = graph_ms(lambda i: F.linear(x, ws[i]), copies)
            ref = F.linear(x, ws[0]).float()
            print(f"{name} N={n} K={k} M={m}: bf16 F.linear {bf16:.4f} ms ({2 * n * k / bf16 / 1e6:.0f} GB/s, "
                  f"{2 * m * n * k / bf16 / 1e9:.0f} TFLOP/s)", flush=True)
            for mode, swap in itertools.product(SCALE_MODES, (None, *swaps) if m <= 64 else (None,)):
                base = graph_ms(lambda i: fp8_linear(x, *qs[i], (128, 128), scale_mode=mode, swap=swap), copies)
                print(f"  fp8 heuristic {fp8_tiles(m)} scale_mode={mode} swap={swap}: {base:.4f} ms "
                      f"({fp8_bytes / base / 1e6:.0f} GB/s, {2 * m * n * k / base / 1e9:.0f} TFLOP/s) = "
                      f"{base / bf16:.2f}x bf16", flush=True)
            rows = []
            for tiles, warps, stages, splits, swap in (small if m <= 64 else large):
                tiles = (max(16, fp8_tiles(m)[0]), *tiles[1:]) if tiles[0] is None else tiles
                launch = dict(tiles=tiles, num_warps=warps, num_stages=stages, splits=splits, swap=swap,
                              scale_mode=args.scale_mode)
                try:
                    out = fp8_linear(x, *qs[0], (128, 128), **launch)
                    err = ((out.float() - ref).norm() / ref.norm()).item()
                    ms = graph_ms(lambda i: fp8_linear(x, *qs[i], (128, 128), **launch), copies)
                except Exception as exc:  # a launch that does not compile or fit
                    rows.append((float("inf"), (tiles, warps, stages, splits, swap), type(exc).__name__))
                    continue
                rows.append((ms, (tiles, warps, stages, splits, swap), f"rel err vs bf16 {err:.1e}"))
            rows.sort(key=lambda r: r[0])
            for ms, launch, note in rows[:args.top]:
                print(f"  (BM,BN,BK),warps,stages,splits,swap={launch}: {ms:.4f} ms ({fp8_bytes / ms / 1e6:.0f} GB/s) "
                      f"= {ms / bf16:.2f}x bf16; {note}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
