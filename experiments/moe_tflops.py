"""Achieved TFLOP/s and bandwidth of the fused MoE at LLaDA2.0-mini shapes (issue #18 item 3).

Run on a CUDA machine from the repo root::

    python experiments/moe_tflops.py [--tokens 32,512,2048,4096] [--routing block|uniform] [--out DIR]
    python experiments/moe_tflops.py --device cpu --tiny        # smoke run (Triton interpreter, tiny shapes)

Shapes: H = 2048, I = 512, E = 256 routed experts, top-8, 8 groups / top-4 groups (the mini
checkpoint), plus one extra slot (the shared expert, weight 1 for every token) when the engine
folds it into the fused MoE (``--shared-slot auto``: up to ``llada2.FOLD_MAX_TOKENS`` tokens).
Routing: the LLaDA2 group-limited top-k (reference op) of synthetic router logits; ``block``
(default) draws them as a fixed expert popularity (N(0, 0.6)) plus a component shared by each
sequence of 32 tokens (N(0, 1): the tokens of one block route alike) plus per-token noise
(N(0, 1)), which gives distinct-expert counts near the benchmark's measured U on random
weights (about 70 at 32 tokens, 180 at 128, 240 at 512, all 256 from 2,048); ``uniform``
draws every token's experts independently and uniformly.

Per token count T it times the whole ``fused_moe`` call (CUDA events, median of ``--reps``,
expert weights rotated over copies so repeats do not hit L2) and, with torch.profiler, the
two GEMM kernels (``_gate_up_kernel``, ``_down_kernel``) alone; prints ms, TFLOP/s with
FLOPs = 2 x assignments x (2I*H + H*I) (assignments = T x (top-k + extra slots)), % of the
bf16 dense peak (``--peak-tflops``, default the issue's H200 figure), and the bytes a call must
move at least (each selected expert's weights once, x, the intermediate and per-assignment
buffers written and read, the output) with the GB/s they imply.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "experiments"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from roofline import H200_BF16_DENSE_PEAK_TFLOPS  # noqa: E402

MINI = dict(hidden=2048, inter=512, experts=256, top_k=8, n_group=8, topk_group=4)
TINY = dict(hidden=64, inter=32, experts=16, top_k=4, n_group=4, topk_group=2)
SEQ_TOKENS = 32  # tokens of one block: the share of routing that one sequence's tokens have in common


def routing(t: int, shape: dict, mode: str, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids [T, k] long, weights [T, k] fp32)`` of ``t`` tokens (see the module docstring)."""
    from diffulex.kernels.reference.moe_router import group_limited_topk

    e = shape["experts"]
    if mode == "uniform":
        ids = torch.rand(t, e, generator=gen).topk(shape["top_k"], dim=-1).indices
        w = torch.rand(t, shape["top_k"], generator=gen)
        return ids, w / w.sum(-1, keepdim=True)
    popularity = 0.6 * torch.randn(e, generator=gen)
    seqs = -(-t // SEQ_TOKENS)
    shared = torch.randn(seqs, 1, e, generator=gen).expand(seqs, SEQ_TOKENS, e).reshape(-1, e)[:t]
    logits = popularity + shared + torch.randn(t, e, generator=gen)
    return group_limited_topk(logits, torch.zeros(e), shape["top_k"], shape["n_group"], shape["topk_group"], 1.0)


def kernel_times(fn, reps: int) -> dict[str, float]:
    """Median device ms per call of the two GEMM kernels, from torch.profiler ({} if none seen)."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(reps):
            fn(i)
        torch.cuda.synchronize()
    out = {}
    for ev in prof.key_averages():
        if ev.device_type != torch.autograd.DeviceType.CUDA:
            continue
        for kernel in ("_gate_up_kernel", "_down_kernel"):
            if kernel in ev.key and ev.count:
                out[kernel] = out.get(kernel, 0.0) + ev.self_device_time_total / 1e3 / reps  # us -> ms per call
    return out


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (H 64, I 32, 16 experts, top-4): the CPU smoke run")
    ap.add_argument("--tokens", default=None, help="comma-separated token counts (default 32,512,2048,4096; tiny 8,32)")
    ap.add_argument("--routing", default="block", choices=["block", "uniform"])
    ap.add_argument("--shared-slot", default="auto", choices=["auto", "on", "off"],
                    help="the shared expert as an extra slot: auto = as the engine (up to FOLD_MAX_TOKENS tokens)")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--peak-tflops", type=float, default=H200_BF16_DENSE_PEAK_TFLOPS)
    ap.add_argument("--no-kernel-split", dest="kernel_split", action="store_false",
                    help="skip the torch.profiler timing of the two GEMM kernels")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="directory for moe_tflops.json / .md")
    args = ap.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("moe_tflops: --device cuda but no CUDA device; use --device cpu --tiny")
    if not cuda:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are decorated
    from diffulex.kernels.triton.fused_moe import fused_moe
    from diffulex.models.llada2 import FOLD_MAX_TOKENS

    shape = TINY if args.tiny else MINI
    h, i_, e, k = shape["hidden"], shape["inter"], shape["experts"], shape["top_k"]
    tokens = [int(v) for v in (args.tokens or ("8,32" if args.tiny else "32,512,2048,4096")).split(",")]
    dev = torch.device(args.device)
    dt = torch.bfloat16 if cuda else torch.float32
    gen = torch.Generator().manual_seed(0)
    copies = 3 if cuda else 1  # 3 x 1.6 GB of experts at the mini shape: beyond L2
    wgen = torch.Generator(device=dev).manual_seed(1)  # drawn on the device: 3 x 0.8 G values at the mini shape
    w13s = [torch.randn(e + 1, 2 * i_, h, generator=wgen, device=dev, dtype=dt) * h ** -0.5 for _ in range(copies)]
    w2s = [torch.randn(e + 1, h, i_, generator=wgen, device=dev, dtype=dt) * i_ ** -0.5 for _ in range(copies)]
    elem = w13s[0].element_size()
    peak = args.peak_tflops * 1e12 if cuda else None
    card = torch.cuda.get_device_name() if cuda else "cpu"
    lines = [f"card: {card}; torch {torch.__version__}; shapes H {h}, I {i_}, E {e}, top-{k}; routing {args.routing}; "
             f"peak {args.peak_tflops:.0f} TFLOP/s (bf16 dense)" if cuda else
             f"card: cpu (Triton interpreter); shapes H {h}, I {i_}, E {e}, top-{k}; routing {args.routing}",
             "",
             "| tokens | slots / token | U | max tokens / expert | ms | TFLOP/s | % of peak | gate_up ms | down ms | "
             "GEMM-only TFLOP/s | GEMM-only % of peak | min GB | GB/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    print(lines[0], flush=True)
    results = []
    for t in tokens:
        ids, w = routing(t, shape, args.routing, gen)
        extra = {"auto": t <= FOLD_MAX_TOKENS, "on": True, "off": False}[args.shared_slot]
        if extra:  # the shared expert's slot: id E, weight 1 (what the router appends)
            ids = torch.cat([ids, torch.full((t, 1), e, dtype=ids.dtype)], 1)
            w = torch.cat([w, torch.ones(t, 1)], 1)
        n_exp = e + 1 if extra else e
        ids, w = ids.to(dev), w.to(dev)
        x = torch.randn(t, h, generator=gen).to(dev, dt)
        u = int(ids[:, :k].unique().numel())
        max_load = int(torch.bincount(ids[:, :k].flatten(), minlength=e).max())

        def call(rep: int):
            c = rep % copies
            return fused_moe(x, ids, w, w13s[c][:n_exp], w2s[c][:n_exp], 0, n_exp)

        for rep in range(2 if cuda else 1):  # compile / warm up
            call(rep)
        times = []
        for rep in range(args.reps):
            if cuda:
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                call(rep)
                b.record()
                b.synchronize()
                times.append(a.elapsed_time(b) / 1e3)
            else:
                t0 = time.perf_counter()
                call(rep)
                times.append(time.perf_counter() - t0)
        sec = statistics.median(times)
        assign = t * ids.shape[1]
        flops = 2 * assign * (2 * i_ * h + h * i_)
        selected = u + (1 if extra else 0)
        nbytes = elem * (selected * 3 * i_ * h + 2 * t * h + 2 * assign * i_ + 2 * assign * h)
        split = kernel_times(call, args.reps) if cuda and args.kernel_split else {}
        gemm_s = sum(split.values()) / 1e3 if len(split) == 2 else None
        row = dict(tokens=t, slots=ids.shape[1], extra_slot=extra, u=u, max_tokens_per_expert=max_load, ms=sec * 1e3,
                   tflops=flops / sec / 1e12, peak_pct=100 * flops / sec / peak if peak else None,
                   gate_up_ms=split.get("_gate_up_kernel"), down_ms=split.get("_down_kernel"),
                   gemm_tflops=flops / gemm_s / 1e12 if gemm_s else None,
                   gemm_peak_pct=100 * flops / gemm_s / peak if gemm_s and peak else None,
                   min_gb=nbytes / 1e9, gb_s=nbytes / sec / 1e9, flops=flops)
        results.append(row)

        def f(v, spec):
            return "-" if v is None else format(v, spec)

        lines.append(f"| {t} | {row['slots']} | {u} | {max_load} | {row['ms']:.3f} | {row['tflops']:.4g} | "
                     f"{f(row['peak_pct'], '.1f')} | {f(row['gate_up_ms'], '.3f')} | {f(row['down_ms'], '.3f')} | "
                     f"{f(row['gemm_tflops'], '.4g')} | {f(row['gemm_peak_pct'], '.1f')} | {row['min_gb']:.4g} | "
                     f"{row['gb_s']:,.0f} |")
        print(lines[-1] if len(results) > 1 else "\n".join(lines[1:]), flush=True)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "moe_tflops.md").write_text("\n".join(lines) + "\n")
        (out / "moe_tflops.json").write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
