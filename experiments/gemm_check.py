"""Skinny GEMM (Triton) vs cuBLAS (``F.linear``) at the decode-step shapes of LLaDA-8B and LLaDA2.0-mini.

Run on a CUDA machine from the repo root: ``python experiments/gemm_check.py [--quick]``.
For each projection (bf16 weight ``[N, K]``) and token count M (32, 64, 128; ``--quick``: 32,
64): checks ``skinny_linear`` (default launch, with bias, twice for determinism, and every
swept launch) against an fp32 ``F.linear`` (relative error < 1e-2), then times cuBLAS, the
default launch (with a reused counter buffer, and with per-call zeroed counters) and a small
sweep of launches. Each time is the GPU time per call inside a CUDA graph of 20 back-to-back
calls (median of replays) that rotate over enough weight copies (> 200 MB together, one copy
for weights beyond that) that the 50 MB L2 holds none of them. Bandwidth counts W + x + y
bytes; % BW is against a measured device-to-device copy of 1 GiB (read + write bytes).
Prints a Markdown table (also written to ``$OUT/gemm_check.md`` when ``OUT`` is set, with every
swept launch in ``$OUT/gemm_sweep.csv``); exits 1 on any wrong result. ``--grid`` sweeps the
whole launch grid instead (for tuning ``skinny_config``; pick cases with ``--shapes`` / ``--m``),
adding each launch's registers, spills and shared memory to the CSV.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from diffulex.kernels.triton import skinny_gemm
from diffulex.kernels.triton.skinny_gemm import (DeviceFacts, SkinnyConfig, device_facts, fill_splits, skinny_config,
                                                 skinny_linear)

SHAPES = [  # (name, K, N)
    ("8B qkv", 4096, 12288), ("8B o_proj", 4096, 4096), ("8B gate_up", 4096, 24576),
    ("8B down", 12288, 4096), ("8B lm_head", 4096, 126464),
    ("mini qkv", 2048, 3072), ("mini o_proj", 2048, 2048), ("mini gate_up", 2048, 10240),
    ("mini down", 5120, 2048), ("mini lm_head", 2048, 157184),
]
TILES = [(32, 128), (32, 256), (64, 64), (64, 128), (64, 256), (128, 64), (128, 128)]  # (BLOCK_N, BLOCK_K)
WARPS_STAGES = [(4, 3), (4, 4), (4, 5), (8, 4)]
SMEM_LIMIT = 216 * 1024  # of the H100's 227 KB per block
ROTATE_BYTES = 200e6
REL_TOL = 1e-2
DEV, DT = torch.device("cuda"), torch.bfloat16


def bench_graph(call, reps: int = 20, iters: int = 10) -> float:
    """GPU µs of one ``call(i)`` from a CUDA graph of ``reps`` calls ``i = 0..reps-1`` (median of replays)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        call(0)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(reps):
            call(i)
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / reps)
    del graph
    return statistics.median(times)


def copy_bandwidth() -> float:
    """GB/s of a device-to-device copy of 1 GiB, counting bytes read and written."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device=DEV)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return 2 * src.numel() / statistics.median(times) / 1e6


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    if not torch.isfinite(out).all():
        return float("inf")
    return (torch.linalg.vector_norm(out - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-30)).item()


def sweep(m: int, n: int, k: int, facts: DeviceFacts, quick: bool) -> list[SkinnyConfig]:
    """A few tiles x (warps, stages), each at the split the heuristic would give it, plus other
    splits of the default tile; launches whose pipeline needs more than ``SMEM_LIMIT`` are left out."""
    block_m = max(16, 1 << (m - 1).bit_length())
    default = skinny_config(m, n, k, facts.sm_count, 2, facts.smem_bytes)
    programs = facts.sm_count * max(block_m, 64) // 192  # as skinny_config
    out = []
    for bn, bk in TILES:
        for warps, stages in WARPS_STAGES[1:3] if quick else WARPS_STAGES:
            if stages * (bn + block_m) * bk * 2 <= SMEM_LIMIT:
                out.append(SkinnyConfig(bn, bk, fill_splits(n, k, bn, bk, programs), warps, stages))
    for split in (1, default.split_k // 2, default.split_k * 2, default.split_k * 4):
        if split >= 1:
            out.append(default._replace(split_k=split))
    return [c for i, c in enumerate(out) if c not in out[:i] and c != default]


def full_grid(m: int) -> list[SkinnyConfig]:
    """The tuning grid: every (BLOCK_N, BLOCK_K, SPLIT_K, warps, stages) whose pipeline fits in shared memory."""
    block_m = max(16, 1 << (m - 1).bit_length())
    return [SkinnyConfig(bn, bk, split, warps, stages)
            for bn in (32, 64, 128) for bk in (64, 128, 256) for split in (1, 2, 4, 8)
            for warps in ((4, 8) if bn == 128 else (4,)) for stages in (3, 4, 5)
            if stages * (bn + block_m) * bk * 2 <= SMEM_LIMIT]


def fmt_time(us: float | None, nbytes: int, copy_gbs: float) -> str:
    if us is None:
        return "- | -"
    gbs = nbytes / us / 1e3
    return f"{us:.1f} | {100 * gbs / copy_gbs:.0f}%"


def run_shape(name, k, n, m, facts, copy_gbs, quick, grid, counters, rows, sweep_rows, failures) -> None:
    gen = torch.Generator(device=DEV).manual_seed(k * 7 + n + m)
    wbytes = n * k * 2
    copies = max(1, math.ceil(ROTATE_BYTES / wbytes))
    ws = [torch.randn(n, k, device=DEV, dtype=DT, generator=gen) * k ** -0.5 for _ in range(copies)]
    xs = [torch.randn(m, k, device=DEV, dtype=DT, generator=gen) for _ in range(copies)]
    bias = torch.randn(n, device=DEV, dtype=DT, generator=gen)
    nbytes = wbytes + m * k * 2 + m * n * 2
    ref = F.linear(xs[0].float(), ws[0].float())  # [M, N] fp32
    case = f"{name} {k}->{n} M={m}"

    def check(label: str, out: torch.Tensor, expected: torch.Tensor) -> bool:
        err = rel_err(out, expected)
        if not err < REL_TOL:
            failures.append(f"{case} {label}: rel err {err:.2e}")
            print(f"  FAIL {case} {label}: rel err {err:.2e}", flush=True)
            return False
        return True

    default = skinny_config(m, n, k, facts.sm_count, 2, facts.smem_bytes)  # what skinny_linear picks
    check("cuBLAS", F.linear(xs[0], ws[0]), ref)
    out = skinny_linear(xs[0], ws[0], config=default, counters=counters)
    ok = check(f"default {tuple(default)}", out, ref)
    with_bias = skinny_linear(xs[0], ws[0], bias, config=default, counters=counters)
    ok &= check("default + bias", with_bias, ref + bias.float())
    again = skinny_linear(xs[0], ws[0], bias, config=default, counters=counters)
    if not torch.equal(again, with_bias):
        failures.append(f"{case}: two calls differ (split-K not deterministic or counters not reset)")
        ok = False
    if skinny_linear(xs[0], ws[0], bias).ne(with_bias).any():  # its own default launch, per-call counters
        failures.append(f"{case}: per-call counters give another result")
        ok = False

    cublas_us = bench_graph(lambda i: F.linear(xs[i % copies], ws[i % copies]))
    default_us = bench_graph(lambda i: skinny_linear(xs[i % copies], ws[i % copies], config=default,
                                                     counters=counters)) if ok else None
    memset_us = None
    if ok and default.split_k > 1:
        memset_us = bench_graph(lambda i: skinny_linear(xs[i % copies], ws[i % copies], config=default))
    best = (default_us, default) if default_us is not None else (None, None)
    for cfg in full_grid(m) if grid else sweep(m, n, k, facts, quick):
        try:
            out = torch.empty(m, n, device=DEV, dtype=DT)
            kernel = skinny_gemm._launch(xs[0], ws[0], None, out, cfg, counters)
            torch.cuda.synchronize()
        except Exception as exc:  # a launch that does not compile or fit in shared memory
            sweep_rows.append((case, tuple(cfg), None, type(exc).__name__, ""))
            continue
        if not check(f"sweep {tuple(cfg)}", out, ref):
            continue
        us = bench_graph(lambda i, c=cfg: skinny_linear(xs[i % copies], ws[i % copies], config=c, counters=counters))
        meta = getattr(kernel, "metadata", None)
        info = f"{getattr(kernel, 'n_regs', '')} {getattr(kernel, 'n_spills', '')} {getattr(meta, 'shared', '')}"
        sweep_rows.append((case, tuple(cfg), us, "", info))
        if grid:
            print(f"  {case} {tuple(cfg)}: {us:.2f} µs ({info})", flush=True)
        if best[0] is None or us < best[0]:
            best = (us, cfg)
    torch.cuda.synchronize()
    if counters.any():
        failures.append(f"{case}: split-K counters not reset to zero")
    row = (f"| {name} {k}->{n} | {m} | {fmt_time(cublas_us, nbytes, copy_gbs)} | "
           f"{fmt_time(default_us, nbytes, copy_gbs)} | {'-' if memset_us is None else f'{memset_us:.1f}'} | "
           f"{tuple(default)} | {tuple(best[1]) if best[1] else '-'} | {fmt_time(best[0], nbytes, copy_gbs)} |")
    rows.append(dict(line=row, bw=[None if t is None else nbytes / t / 1e3 / copy_gbs
                                   for t in (cublas_us, default_us, best[0])]))
    print(row, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="M = 32, 64 and a smaller sweep")
    parser.add_argument("--m", default=None, help="comma-separated token counts (default 32,64,128)")
    parser.add_argument("--grid", action="store_true", help="sweep the whole tuning grid (slow: pick cases)")
    parser.add_argument("--shapes", default=None, help="comma-separated substrings of shape names to keep")
    opts = parser.parse_args()
    if not torch.cuda.is_available():
        print("gemm_check needs a CUDA device", file=sys.stderr)
        return 2
    ms = [int(v) for v in opts.m.split(",")] if opts.m else ([32, 64] if opts.quick else [32, 64, 128])
    shapes = [s for s in SHAPES if not opts.shapes or any(p in s[0] for p in opts.shapes.split(","))]
    torch.manual_seed(0)
    t0 = time.time()
    facts = device_facts(DEV)
    copy_gbs = copy_bandwidth()
    head = (f"device: {torch.cuda.get_device_name()} ({facts.sm_count} SMs, {facts.smem_bytes // 1024} KB shared memory per "
            f"program), torch {torch.__version__}; "
            f"copy bandwidth {copy_gbs:.0f} GB/s (1 GiB D2D, read + write)")
    print(head, flush=True)
    table = ["| shape K->N | M | cuBLAS µs | cuBLAS %BW | skinny µs | skinny %BW | +memset µs | default "
             "(BN, BK, SPLIT, warps, stages) | best sweep | best µs | best %BW |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(table), flush=True)
    counters = torch.zeros(1 << 16, dtype=torch.int32, device=DEV)  # reused by every launch, kept zero by it
    rows, sweep_rows, failures = [], [], []
    for name, k, n in shapes:
        for m in ms:
            try:
                run_shape(name, k, n, m, facts, copy_gbs, opts.quick, opts.grid, counters, rows, sweep_rows, failures)
            except Exception as exc:  # a crash is a failure of that case; the rest still run
                failures.append(f"{name} M={m}: {type(exc).__name__}: {exc}")
                print(f"  FAIL {name} M={m}: {type(exc).__name__}: {exc}", flush=True)
            torch.cuda.empty_cache()
    means = []
    for j, label in enumerate(("cuBLAS", "skinny default", "skinny best")):
        vals = [r["bw"][j] for r in rows if r["bw"][j] is not None]
        means.append(f"{label} {100 * statistics.mean(vals):.0f}%" if vals else f"{label} -")
    summary = f"mean % of copy bandwidth: {', '.join(means)}; {time.time() - t0:.0f} s"
    print(summary)
    if failures:
        print(f"{len(failures)} FAILURES:\n  " + "\n  ".join(failures))
    out_dir = os.environ.get("OUT")
    if out_dir:
        with open(os.path.join(out_dir, "gemm_check.md"), "w") as f:
            f.write("\n".join([head, "", *table, *(r["line"] for r in rows), "", summary, *failures]) + "\n")
        with open(os.path.join(out_dir, "gemm_sweep.csv"), "w") as f:
            f.write("case,block_n,block_k,split_k,warps,stages,us,error,regs spills smem\n")
            for case, cfg, us, err, info in sweep_rows:
                f.write(f"{case},{','.join(map(str, cfg))},{'' if us is None else f'{us:.2f}'},{err},{info}\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
