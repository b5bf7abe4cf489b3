"""Sweep the split-K router GEMM's launch on a GPU at LLaDA2.0-mini shapes (256 experts, H=2048).

``python experiments/router_tune.py [--tokens 32,64,512,2048]``: for each token count, times
the whole router (the fp32 logits + the group-limited top-k with the shared expert's slot),
graph-timed as in the engine, for: cuBLAS (cast + SGEMM), the current default launch
(``router_tiles``, ``default_precision``), and a grid of split-K launches
``(precision, BLOCK_T, BLOCK_E, BLOCK_K, splits, stages)``. Prints the best launches per
precision with their error against fp64 logits and the rows whose experts differ from the fp32
reference's.
"""

from __future__ import annotations

import argparse
import itertools
import sys

import torch
import torch.nn.functional as F

from kernel_check import bench_graph  # graph-timed, as the engine runs

from diffulex.kernels.triton.moe_router import group_limited_topk
from diffulex.kernels.triton.router_gemm import MAX_SPLITS, router_logit_partials

E, H, TOP_K, N_GROUP, TOPK_GROUP, SCALE = 256, 2048, 8, 8, 4, 2.5


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", default="32,64,512,2048")
    ap.add_argument("--top", type=int, default=4, help="launches shown per precision")
    args = ap.parse_args()
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    w = torch.randn(E, H, device=dev, generator=gen) * H ** -0.5  # fp32 router weight
    bias = torch.randn(E, device=dev, generator=gen) * 0.1
    route = (TOP_K, N_GROUP, TOPK_GROUP, SCALE, 1)
    for t in (int(v) for v in args.tokens.split(",")):
        x = torch.randn(t, H, device=dev, generator=gen).to(torch.bfloat16)
        exact = (x.double() @ w.double().T)  # [T, E]
        ref_ids = group_limited_topk(F.linear(x.float(), w), bias, *route)[0]
        t_cublas = bench_graph(lambda: group_limited_topk(F.linear(x.float(), w), bias, *route))
        t_default = bench_graph(lambda: group_limited_topk(router_logit_partials(x, w), bias, *route))
        print(f"T={t}: cuBLAS {t_cublas * 1e3:.1f} us, split-K default {t_default * 1e3:.1f} us", flush=True)
        small = t <= 64
        block_ts = [min(64, max(16, 1 << (t - 1).bit_length()))] if small else [32, 64, 128]
        grid = itertools.product(("ieee", "tf32x3"), block_ts, (16, 32, 64), (32, 64, 128),
                                 (2, 4, 8) if small else (1, 2), (2, 3, 4), (4,) if small else (4, 8))
        rows = []
        for prec, bt, be, bk, splits, stages, warps in grid:
            if splits > MAX_SPLITS or -(-H // splits) < bk:
                continue
            kw = dict(splits=splits, precision=prec, tiles=(bt, be, bk), num_warps=warps, num_stages=stages)
            try:
                part = router_logit_partials(x, w, **kw)
                err = (part.sum(0).double() - exact).abs().max().item()
                ids = group_limited_topk(part, bias, *route)[0]
                bad = int((ids.sort(1).values != ref_ids.sort(1).values).any(1).sum())
                ms = bench_graph(lambda: group_limited_topk(router_logit_partials(x, w, **kw), bias, *route))
            except Exception as exc:  # a launch that does not compile or fit
                print(f"  {prec} {(bt, be, bk, splits, stages, warps)}: {type(exc).__name__}: {exc}"[:200], flush=True)
                continue
            rows.append((ms, prec, (bt, be, bk, splits, stages, warps), err, bad))
        for prec in ("ieee", "tf32x3"):
            best = sorted(r for r in rows if r[1] == prec)[:args.top]
            for ms, _, cfg, err, bad in best:
                print(f"  {prec:6s} BT,BE,BK,S,stages,warps={cfg}: {ms * 1e3:.1f} us, max|err| {err:.1e}, "
                      f"{bad} rows differ", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
