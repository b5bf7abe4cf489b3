"""GPU check of every Triton op against its PyTorch reference, at LLaDA2.0-mini shapes.

Run on a CUDA machine from the repo root: ``python experiments/kernel_check.py [--quick]``.
For batches of 1/4/16 sequences x 32 query tokens over 128..2048 cached tokens (page 32),
bf16: checks store_kvcache, paged attention (block-causal, cache_only, sliding window,
softcap), the group-limited router top-k, fused MoE (256 experts, top-8, I=512) and greedy
confidence (vocab 157184), RMSNorm + residual, q/k norm + RoPE and SiLU-and-mul, and (once, not per
batch) the FP8 W8A16 dense linear at LLaDA-8B / LLaDA2.0-mini shapes against bf16 ``F.linear``, then times Triton vs reference with CUDA events (median after
warm-up, inputs rotated so repeats do not just hit L2). Prints one table; exits 1 on any
mismatch. The MoE timing baseline is the per-expert loop the engine uses now
(``StackedExperts``); the per-token loop is only the correctness oracle.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys

import torch
import torch.nn.functional as F

from diffulex.kernels import REFERENCE_OPS, get_ops
from diffulex.kernels.triton.fused_moe import moe_align
from diffulex.layers.attention_metadata import AttentionMetadata
from diffulex.layers.moe.experts import StackedExperts

HIDDEN, HQ, HKV, HEAD_DIM, PAGE, BLOCK = 2048, 16, 4, 128, 32, 32
EXPERTS, TOP_K, MOE_I, N_GROUP, TOPK_GROUP, SCALING = 256, 8, 512, 8, 4, 2.5
VOCAB, MASK_ID = 157184, 156895
DEV, DT = torch.device("cuda"), torch.bfloat16
ROWS: list[dict] = []


def bench(calls, warmup: int = 10, iters: int = 50) -> float:
    """Median ms of ``calls[i % len(calls)]()`` over ``iters`` runs, each between CUDA events."""
    for i in range(warmup):
        calls[i % len(calls)]()
    torch.cuda.synchronize()
    times = []
    for i in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        calls[i % len(calls)]()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    if torch.isnan(out).any():
        return float("inf")
    return (torch.linalg.vector_norm(out - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-30)).item()


def record(op, case, err, ok, ref_ms=None, tri_ms=None, note=""):
    ROWS.append(dict(op=op, case=case, err=err, ok=ok, ref_ms=ref_ms, tri_ms=tri_ms, note=note))


def attention_case(batch: int, mode: str, gen: torch.Generator, hq: int = HQ, hkv: int = HKV,
                   ctx: int | None = None):
    """Paged caches (random bf16) + metadata for ``batch`` x 32 queries in ``mode``
    (contexts random in 128..2048, or all ``ctx``)."""
    if ctx is not None:
        ctxs = [ctx // BLOCK * BLOCK] * batch
    else:
        ctxs = (torch.randint(128, 2049, (batch,), generator=gen) // BLOCK * BLOCK).tolist()
    pages_per_seq = [math.ceil((c + BLOCK) / PAGE) for c in ctxs]
    num_pages = sum(pages_per_seq) + 7
    perm = torch.randperm(num_pages, generator=gen)
    page_table = torch.full((batch, max(pages_per_seq)), -1, dtype=torch.long)
    pos, lo, hi, used = [], [], [], 0
    for s, (c, n_pages) in enumerate(zip(ctxs, pages_per_seq)):
        page_table[s, :n_pages] = perm[used:used + n_pages]
        used += n_pages
        p = torch.arange(c - BLOCK, c) if mode == "cache_only" else torch.arange(c, c + BLOCK)
        pos.append(p)
        lo.append(torch.clamp(p - 512, min=0) if mode == "sliding" else torch.zeros_like(p))
        hi.append(p + 1 if mode == "sliding" else torch.full_like(p, int(p[-1]) + 1))
    positions = torch.cat(pos)
    seq_of = torch.arange(batch).repeat_interleave(BLOCK)
    slots = page_table[seq_of, positions // PAGE] * PAGE + positions % PAGE
    n = batch * BLOCK
    meta = AttentionMetadata(
        cu_seqlens_q=torch.arange(0, n + 1, BLOCK), positions=positions, context_lens=torch.tensor(ctxs),
        page_table=page_table, slot_mapping=slots, key_lo=torch.cat(lo), key_hi=torch.cat(hi),
        cache_only=torch.full((batch,), mode == "cache_only"), logits_indices=torch.arange(n), page_size=PAGE)
    meta.validate()
    meta = AttentionMetadata(**{k: (v.to(DEV) if isinstance(v, torch.Tensor) else v) for k, v in vars(meta).items()})
    k_cache = torch.randn(num_pages, PAGE, hkv, HEAD_DIM, device=DEV, dtype=DT)
    v_cache = torch.randn_like(k_cache)
    q = torch.randn(n, hq, HEAD_DIM, device=DEV, dtype=DT)
    k, v = torch.randn(n, hkv, HEAD_DIM, device=DEV, dtype=DT), torch.randn(n, hkv, HEAD_DIM, device=DEV, dtype=DT)
    return q, k, v, k_cache, v_cache, meta, sum(ctxs)


def bench_graph(fn, reps: int = 20, iters: int = 10) -> float:
    """GPU ms of one ``fn()`` from a CUDA graph of ``reps`` calls (no launch overhead: as in the engine)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / reps)
    return statistics.median(times)


def check_attention_splits(batch: int, gen: torch.Generator) -> None:
    """Split key axis vs one pass, GPU time per call from CUDA graphs, at the mini (16/4 heads)
    and LLaDA-8B (32/32) head layouts over short and long contexts (block-causal, bf16)."""
    from diffulex.kernels.triton.paged_attention import paged_attention as pa

    scale = HEAD_DIM ** -0.5
    for name, hq, hkv in (("mini", HQ, HKV), ("8b", 32, 32)):
        for ctx in (160, 320, 1024, 4096):
            q, k, v, k_cache, v_cache, meta, ctx_total = attention_case(batch, "block", gen, hq, hkv, ctx)
            REFERENCE_OPS.store_kvcache(k, v, k_cache, v_cache, meta.slot_mapping)
            out_ref = REFERENCE_OPS.paged_attention(q, k, v, k_cache, v_cache, meta, scale, None)
            fwd = meta.for_forward()  # the engine's per-forward memo: the grid map is built once
            times, errs = {}, []
            for label, splits, tiles in (("one pass", 0, None), ("split", None, None), ("split>=2", None, 1)):
                errs.append(rel_err(pa(q, k, v, k_cache, v_cache, fwd, scale, None, splits=splits,
                                       tiles_per_split=tiles), out_ref))
                times[label] = bench_graph(lambda s=splits, t=tiles: pa(q, k, v, k_cache, v_cache, fwd, scale, None,
                                                                        splits=s, tiles_per_split=t))
            ok = max(errs) < 1e-2
            kv_bytes = 2 * ctx_total * hkv * HEAD_DIM * 2
            record("attn split-KV", f"B={batch} {name} ctx={ctx}", max(errs), ok, times["one pass"], times["split"],
                   f"graph-timed; KV {kv_bytes / 1e6:.1f} MB, split {kv_bytes / times['split'] / 1e6:.0f} GB/s; "
                   f"one tile per share: {times['split>=2'] * 1e3:.1f} us")


def check_attention(tri, batch: int, gen: torch.Generator, quick: bool) -> None:
    scale = HEAD_DIM ** -0.5
    for mode, softcap in [("block", None), ("cache_only", None), ("sliding", None), ("block", 30.0)]:
        q, k, v, k_cache, v_cache, meta, ctx_total = attention_case(batch, mode, gen)
        ref_k, ref_v = k_cache.clone(), v_cache.clone()
        REFERENCE_OPS.store_kvcache(k, v, ref_k, ref_v, meta.slot_mapping)
        tri.store_kvcache(k, v, k_cache, v_cache, meta.slot_mapping)
        ok = torch.equal(k_cache, ref_k) and torch.equal(v_cache, ref_v)
        if mode == "block" and softcap is None:
            rot = [(k.clone(), v.clone(), k_cache.clone(), v_cache.clone()) for _ in range(4)]
            t_ref = bench([lambda r=r: REFERENCE_OPS.store_kvcache(*r, meta.slot_mapping) for r in rot])
            t_tri = bench([lambda r=r: tri.store_kvcache(*r, meta.slot_mapping) for r in rot])
            record("store_kvcache", f"B={batch}", 0.0 if ok else float("inf"), ok, t_ref, t_tri)
        out_ref = REFERENCE_OPS.paged_attention(q, k, v, k_cache, v_cache, meta, scale, softcap)
        out = torch.full_like(q, float("nan"))  # poison: every element must be written
        out.copy_(tri.paged_attention(q, k, v, k_cache, v_cache, meta, scale, softcap))
        err = rel_err(out, out_ref)
        ok = err < 1e-2
        case = f"B={batch} {mode}{' softcap' if softcap else ''}"
        t_ref = t_tri = None
        if mode == "block" and softcap is None or not quick:
            n_rot = max(1, math.ceil(200e6 / (2 * k_cache.numel() * 2)))
            caches = [(k_cache.clone(), v_cache.clone()) for _ in range(min(n_rot, 8))]
            t_ref = bench([lambda c=c: REFERENCE_OPS.paged_attention(q, k, v, *c, meta, scale, softcap) for c in caches],
                          iters=20)
            t_tri = bench([lambda c=c: tri.paged_attention(q, k, v, *c, meta, scale, softcap) for c in caches])
        kv_bytes = 2 * ctx_total * HKV * HEAD_DIM * 2
        note = f"KV {kv_bytes / 1e6:.1f} MB" + (f", {kv_bytes / t_tri / 1e6:.0f} GB/s" if t_tri else "")
        record("paged_attention", case, err, ok, t_ref, t_tri, note)
        if mode == "block" and softcap is None:
            from diffulex.kernels.triton.paged_attention import paged_attention as pa
            for bq in (1, 4, 8, 16, 32):
                t = bench([lambda c=c, bq=bq: pa(q, k, v, *c, meta, scale, None, block_q=bq) for c in caches])
                record("  attn block_q", f"B={batch} block_q={bq}", None, True, None, t)


def check_moe(tri, batch: int, gen: torch.Generator) -> None:
    t = batch * BLOCK
    x = torch.randn(t, HIDDEN, device=DEV, dtype=DT)
    router_w = torch.randn(EXPERTS, HIDDEN, device=DEV) * HIDDEN ** -0.5
    bias = torch.randn(EXPERTS, device=DEV) * 0.05
    logits = F.linear(x.float(), router_w)  # [T, E]
    args = (TOP_K, N_GROUP, TOPK_GROUP, SCALING)
    ids_ref, w_ref = REFERENCE_OPS.group_limited_topk(logits, bias, *args)
    ids, w = tri.group_limited_topk(logits, bias, *args)
    bad_rows = int((ids != ids_ref).any(-1).sum())
    ok = bad_rows <= max(1, t // 1000)  # near-ties may order differently by 1 ulp of sigmoid
    same = (ids == ids_ref).all(-1)
    err = rel_err(w[same], w_ref[same])
    t_ref = bench([lambda: REFERENCE_OPS.group_limited_topk(logits, bias, *args)], iters=100)
    t_tri = bench([lambda: tri.group_limited_topk(logits, bias, *args)], iters=100)
    record("router_topk", f"B={batch} T={t}", err, ok and err < 1e-5, t_ref, t_tri, f"{bad_rows} rows differ")
    # The whole router (fp32 logits GEMM + selection, + the shared expert's slot): cuBLAS SGEMM
    # after a cast, then the top-k kernel (the old path) vs split-K logits + top-k over partials.
    r_ids_ref, r_w_ref = REFERENCE_OPS.moe_route(x, router_w, bias, *args, 1)
    r_ids, r_w = tri.moe_route(x, router_w, bias, *args, 1)
    bad_rows = int((r_ids != r_ids_ref).any(-1).sum())
    same = (r_ids == r_ids_ref).all(-1)
    err = rel_err(r_w[same], r_w_ref[same])
    t_old = bench_graph(lambda: tri.group_limited_topk(F.linear(x.float(), router_w), bias, *args, 1))
    t_tri = bench_graph(lambda: tri.moe_route(x, router_w, bias, *args, 1))
    record("moe_route", f"B={batch} T={t}", err, bad_rows <= max(1, t // 1000) and err < 1e-5, t_old, t_tri,
           f"{bad_rows} rows differ (graph-timed; ref_ms = cast + cuBLAS fp32 GEMM + top-k)")

    w13 = torch.randn(EXPERTS, 2 * MOE_I, HIDDEN, device=DEV, dtype=DT) * HIDDEN ** -0.5
    w2 = torch.randn(EXPERTS, HIDDEN, MOE_I, device=DEV, dtype=DT) * MOE_I ** -0.5
    out_ref = REFERENCE_OPS.fused_moe(x, ids, w, w13, w2)
    out = tri.fused_moe(x, ids, w, w13, w2)
    err = rel_err(out, out_ref)
    experts = StackedExperts(EXPERTS, HIDDEN, MOE_I, dtype=DT).to(DEV)
    experts.w13.data, experts.w2.data = w13, w2
    t_ref = bench([lambda: experts(x, ids, w)], iters=20)
    t_tri = bench([lambda: tri.fused_moe(x, ids, w, w13, w2)])
    used = int((moe_align(ids, EXPERTS, 16)[4] > 0).sum())
    w_bytes = used * 3 * HIDDEN * MOE_I * 2
    record("fused_moe", f"B={batch} T={t}", err, err < 2e-2, t_ref, t_tri,
           f"U={used}, {w_bytes / 1e6:.0f} MB, {w_bytes / t_tri / 1e6:.0f} GB/s (ref=per-expert loop)")


def check_moe_fp8(tri, batch: int, gen: torch.Generator) -> None:
    """FP8 experts (W8A16, 128 x 128 scale tiles) against the reference on the same FP8 weights, and
    the time of the bf16 fused MoE beside it (the gain of reading 1 byte per weight)."""
    from diffulex.quantization import quantize_fp8

    t = batch * BLOCK
    x = torch.randn(t, HIDDEN, device=DEV, dtype=DT)
    ids = torch.rand(t, EXPERTS, device=DEV).topk(TOP_K, dim=-1).indices
    w = torch.rand(t, TOP_K, device=DEV)
    w13 = torch.randn(EXPERTS, 2 * MOE_I, HIDDEN, device=DEV, dtype=DT) * HIDDEN ** -0.5
    w2 = torch.randn(EXPERTS, HIDDEN, MOE_I, device=DEV, dtype=DT) * MOE_I ** -0.5
    with torch.device(DEV):  # built on the GPU: its parameters are views of the stacked storage
        experts = StackedExperts(EXPERTS, HIDDEN, MOE_I, dtype=DT)
    experts.w13.data.copy_(w13)
    experts.w2.data.copy_(w2)
    experts.quantize_weights((128, 128))
    fp8 = dict(w13_scale=experts.w13_scale_inv, w2_scale=experts.w2_scale_inv, block=(128, 128))
    out_ref = REFERENCE_OPS.fused_moe(x, ids, w, experts.w13, experts.w2, **fp8)
    out = tri.fused_moe(x, ids, w, experts.w13, experts.w2, **fp8)
    err = rel_err(out, out_ref)
    err_bf16 = rel_err(out, REFERENCE_OPS.fused_moe(x, ids, w, w13, w2))
    t_bf16 = bench([lambda: tri.fused_moe(x, ids, w, w13, w2)])
    t_fp8 = bench([lambda: tri.fused_moe(x, ids, w, experts.w13, experts.w2, **fp8)])
    used = int((moe_align(ids, EXPERTS, 16)[4] > 0).sum())
    w_bytes = used * 3 * HIDDEN * MOE_I
    record("fused_moe_fp8", f"B={batch} T={t}", err, err < 2e-2, t_bf16, t_fp8,
           f"U={used}, {w_bytes / 1e6:.0f} MB fp8, {w_bytes / t_fp8 / 1e6:.0f} GB/s; vs bf16 weights rel err "
           f"{err_bf16:.1e} (ref_ms = bf16 fused MoE)")


# FP8 dense linears (W8A16): (label, N, K) of LLaDA-8B (hidden 4096, 32 heads, MLP 12288) and the
# LLaDA2.0-mini dense parts (hidden 2048, 16 + 2 x 4 heads of 128, dense MLP 5120, shared expert 512).
FP8_LINEAR_SHAPES = [
    ("8B qkv", 12288, 4096), ("8B gate_up", 2 * 12288, 4096), ("8B o_proj", 4096, 4096), ("8B down", 4096, 12288),
    ("mini qkv", 3072, 2048), ("mini dense", 2048, 2048), ("mini gate_up", 2 * 5120, 2048),
    ("mini down", 2048, 5120), ("mini shared gu", 1024, 2048),
]
FP8_LINEAR_TOKENS = (1, 32, 128, 2048)


def _rotating(calls):
    """One call per invocation, cycling through ``calls`` (a captured graph then rotates the weights)."""
    state = [0]

    def fn():
        calls[state[0] % len(calls)]()
        state[0] += 1
    return fn


def check_fp8_linear(tri, label: str, n: int, k: int, tokens=FP8_LINEAR_TOKENS) -> None:
    """The Triton W8A16 ``fp8_linear`` (128 x 128 scale tiles) against the reference on the same FP8
    weight, graph-timed beside the bf16 ``F.linear`` (cuBLAS) of the original weight; weight copies
    rotate so the timing reads HBM, not L2. GB/s counts the weight, scale, input and output bytes."""
    from diffulex.quantization import quantize_fp8

    block = (128, 128)
    w = torch.randn(n, k, device=DEV, dtype=DT) * k ** -0.5
    q, scale = quantize_fp8(w, block)
    copies = max(2, min(8, math.ceil(200e6 / (n * k))))
    ws = [w] + [w.clone() for _ in range(copies - 1)]
    qs = [(q, scale)] + [(q.clone(), scale.clone()) for _ in range(copies - 1)]
    for m in tokens:
        try:
            x = torch.randn(m, k, device=DEV, dtype=DT)
            out = tri.fp8_linear(x, q, scale, block)
            ref = REFERENCE_OPS.fp8_linear(x, q, scale, block)
            err = rel_err(out, ref)
            err_bf16 = rel_err(out, F.linear(x, w))
            t_bf16 = bench_graph(_rotating([lambda w_=w_: F.linear(x, w_) for w_ in ws]))
            t_fp8 = bench_graph(_rotating([lambda qs_=qs_: tri.fp8_linear(x, qs_[0], qs_[1], block) for qs_ in qs]))
            fp8_bytes = n * k + scale.numel() * 4 + 2 * m * (k + n)
            bf16_bytes = 2 * n * k + 2 * m * (k + n)
            record("fp8_linear", f"{label} M={m} N={n} K={k}", err, err < 1e-2, t_bf16, t_fp8,
                   f"{fp8_bytes / t_fp8 / 1e6:.0f} GB/s fp8, {bf16_bytes / t_bf16 / 1e6:.0f} GB/s bf16; "
                   f"{2 * m * n * k / t_fp8 / 1e9:.0f} TFLOP/s; vs bf16 weights rel err {err_bf16:.1e} "
                   "(ref_ms = bf16 F.linear)")
        except Exception as exc:  # one failing shape is recorded; the other shapes and checks still run
            record("fp8_linear", f"{label} M={m} N={n} K={k}", None, False, note=f"{type(exc).__name__}: {exc}")


def check_greedy(tri, batch: int, gen: torch.Generator) -> None:
    m = batch * BLOCK
    n_rot = max(1, math.ceil(200e6 / (m * VOCAB * 2)))
    sets = [torch.randn(m, VOCAB, device=DEV, dtype=DT) * 3 for _ in range(min(n_rot, 8))]
    forbidden = torch.zeros(VOCAB, dtype=torch.bool, device=DEV)
    forbidden[MASK_ID] = True
    forbidden[-100:] = True
    logits = sets[0]
    tok_ref, conf_ref = REFERENCE_OPS.greedy_confidence(logits, forbidden)
    tok, conf = tri.greedy_confidence(logits, forbidden)
    err = rel_err(conf, conf_ref)
    ok = torch.equal(tok, tok_ref) and err < 1e-4
    t_ref = bench([lambda s=s: REFERENCE_OPS.greedy_confidence(s, forbidden) for s in sets])
    t_tri = bench([lambda s=s: tri.greedy_confidence(s, forbidden) for s in sets])
    note = f"{m * VOCAB * 2 / t_tri / 1e6:.0f} GB/s"
    if tri.greedy_confidence is not REFERENCE_OPS.greedy_confidence:  # vocabulary slices vs one pass per row
        from diffulex.kernels.triton.greedy_confidence import greedy_confidence as tri_greedy

        ok = ok and torch.equal(tri_greedy(logits, forbidden, splits=1)[0], tok)
        x32 = logits.float()  # the engine's logits are fp32; graph-timed (the eager times above include the launch)
        note += (f"; fp32 graph-timed {bench_graph(lambda: tri_greedy(x32, forbidden)) * 1e3:.1f} us, one pass "
                 f"per row {bench_graph(lambda: tri_greedy(x32, forbidden, splits=1)) * 1e3:.1f} us")
    record("greedy_confidence", f"B={batch} M={m}", err, ok, t_ref, t_tri, note)


def check_elementwise(tri, batch: int, gen: torch.Generator) -> None:
    """RMSNorm (+ residual), q/k norm + partial RoPE (in place on a fused QKV view), SiLU-and-mul."""
    n = batch * BLOCK
    x = torch.randn(n, HIDDEN, device=DEV, dtype=DT) * 2
    res = torch.randn(n, HIDDEN, device=DEV, dtype=DT)
    w = (1 + 0.1 * torch.randn(HIDDEN, device=DEV)).to(DT)
    out_ref, stream_ref = REFERENCE_OPS.rms_norm(x, w, 1e-6, res)
    out, stream = tri.rms_norm(x, w, 1e-6, res)
    err = rel_err(out, out_ref)
    record("rms_norm+residual", f"T={n} H={HIDDEN}", err, torch.equal(stream, stream_ref) and err < 5e-3,
           bench([lambda: REFERENCE_OPS.rms_norm(x, w, 1e-6, res)]), bench([lambda: tri.rms_norm(x, w, 1e-6, res)]))
    half = HEAD_DIM // 4  # LLaDA2: partial_rotary_factor 0.5
    pos = torch.randint(0, 4096, (n,), device=DEV)
    ang = torch.arange(4096, device=DEV, dtype=torch.float32)[:, None] * torch.rand(half, device=DEV)
    cos, sin = ang.cos().contiguous(), ang.sin().contiguous()
    qw, kw = [(1 + 0.1 * torch.randn(HEAD_DIM, device=DEV)).to(DT) for _ in range(2)]
    qkv = torch.randn(n, HQ + 2 * HKV, HEAD_DIM, device=DEV, dtype=DT)
    def views(t):
        return t.split([HQ, HKV, HKV], dim=1)[:2]
    q_ref, k_ref = REFERENCE_OPS.qk_norm_rope(*views(qkv), pos, cos, sin, qw, kw, 1e-6)
    work = qkv.clone()
    q, k = tri.qk_norm_rope(*views(work), pos, cos, sin, qw, kw, 1e-6)
    err = max(rel_err(q, q_ref), rel_err(k, k_ref))
    record("qk_norm_rope", f"T={n} {HQ}/{HKV}x{HEAD_DIM}", err, err < 5e-3,
           bench([lambda: REFERENCE_OPS.qk_norm_rope(*views(qkv), pos, cos, sin, qw, kw, 1e-6)]),
           bench([lambda: tri.qk_norm_rope(*views(work), pos, cos, sin, qw, kw, 1e-6)]))
    pages = torch.zeros(64, PAGE, HKV, HEAD_DIM, device=DEV, dtype=DT), torch.zeros(64, PAGE, HKV, HEAD_DIM,
                                                                                   device=DEV, dtype=DT)
    slots = torch.randperm(64 * PAGE, device=DEV)[:n]
    ref_pages = tuple(c.clone() for c in pages)
    v_of = lambda t: t[:, HQ + HKV:]  # noqa: E731
    REFERENCE_OPS.qk_norm_rope(*views(qkv), pos, cos, sin, qw, kw, 1e-6, cache=(v_of(qkv), *ref_pages, slots))
    work = qkv.clone()
    tri.qk_norm_rope(*views(work), pos, cos, sin, qw, kw, 1e-6, cache=(v_of(work), *pages, slots))
    err = max(rel_err(pages[0], ref_pages[0]), rel_err(pages[1], ref_pages[1]))
    record("qk_norm_rope+kv", f"T={n} {HQ}/{HKV}x{HEAD_DIM}", err, err < 5e-3,
           bench_graph(lambda: (tri.qk_norm_rope(*views(work), pos, cos, sin, qw, kw, 1e-6),
                                tri.store_kvcache(*views(work)[1:], v_of(work), *pages, slots))),
           bench_graph(lambda: tri.qk_norm_rope(*views(work), pos, cos, sin, qw, kw, 1e-6,
                                                cache=(v_of(work), *pages, slots))),
           "graph-timed; ref_ms = rope kernel + store_kvcache kernel")
    gu = torch.randn(n, 2 * 5632, device=DEV, dtype=DT) * 3
    err = rel_err(tri.silu_and_mul(gu), REFERENCE_OPS.silu_and_mul(gu))
    record("silu_and_mul", f"T={n} I=5632", err, err < 5e-3, bench([lambda: REFERENCE_OPS.silu_and_mul(gu)]),
           bench([lambda: tri.silu_and_mul(gu)]))


def print_table() -> None:
    """One row per check: error, verdict, reference and Triton medians, speed-up, notes."""
    fmt = "{:<18} {:<28} {:>9} {:>4} {:>9} {:>9} {:>7}  {}"
    print(fmt.format("op", "case", "rel_err", "ok", "ref_ms", "tri_ms", "speedup", "note"))
    for r in ROWS:
        num = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        speed = f"{r['ref_ms'] / r['tri_ms']:.1f}x" if r["ref_ms"] and r["tri_ms"] else "-"
        print(fmt.format(r["op"], r["case"], num(r["err"], ".1e"), "ok" if r["ok"] else "FAIL",
                         num(r["ref_ms"], ".3f"), num(r["tri_ms"], ".3f"), speed, r["note"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="time only the main attention mode")
    parser.add_argument("--batches", default="1,4,16")
    parser.add_argument("--no-fp8-linear", action="store_true",
                        help="skip the FP8 dense-linear rows (LLaDA-8B / LLaDA2.0-mini shapes, M = 1, 32, 128, 2048)")
    opts = parser.parse_args()
    if not torch.cuda.is_available():
        print("kernel_check needs a CUDA device", file=sys.stderr)
        return 2
    tri = get_ops(DEV, "triton")
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    for batch in (int(b) for b in opts.batches.split(",")):
        for check in (check_attention, check_attention_splits, check_moe, check_moe_fp8, check_greedy,
                      check_elementwise):
            try:
                if check is check_attention:
                    check(tri, batch, gen, opts.quick)
                elif check is check_attention_splits:
                    check(batch, gen)
                else:
                    check(tri, batch, gen)
            except Exception as exc:  # a crash is a failure of that op, the rest still run
                record(check.__name__.removeprefix("check_"), f"B={batch}", None, False, note=f"{type(exc).__name__}: {exc}")
    if not opts.no_fp8_linear:
        for label, n, k in FP8_LINEAR_SHAPES:
            try:
                check_fp8_linear(tri, label, n, k)
            except Exception as exc:  # e.g. out of memory while building the weights
                record("fp8_linear", label, None, False, note=f"{type(exc).__name__}: {exc}")
    print_table()
    failed = [r for r in ROWS if not r["ok"]]
    print(f"{len(ROWS) - len(failed)}/{len(ROWS)} ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
