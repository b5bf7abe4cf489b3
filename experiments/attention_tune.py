"""Sweep the paged-attention kernel's launch on a GPU at the engine's decode-step shapes.

``python experiments/attention_tune.py [--contexts 160,544] [--batches 1]``: for the
LLaDA2.0-mini (16 query / 4 KV heads) and LLaDA-8B (32 / 32) head layouts, head_dim 128, bf16, a
step of ``batch`` sequences with one 32-token block each (k=1 steps) or two (the just-finished
block re-forwarded beside the new one: k=32 steps), block-causal, over ``context`` cached keys:
times the engine's default launch and a grid of ``(block_q, block_n, num_warps, num_stages,
split)`` launches, graph-timed as in the engine, checks each against the PyTorch reference, and
prints the default and the best launches per shape. The KV cache of one shape is small enough
to stay in L2 across repeats (as the new tokens' K/V do in the engine), so absolute times are
those of L2-resident keys; the comparison between launches is what the sweep is for.
"""

from __future__ import annotations

import argparse
import itertools
import math

import torch

from kernel_check import bench_graph, rel_err  # graph-timed, as the engine runs

from diffulex.kernels import REFERENCE_OPS
from diffulex.kernels.triton.paged_attention import paged_attention
from diffulex.layers.attention_metadata import AttentionMetadata

HEAD_DIM, PAGE, BLOCK = 128, 32, 32
LAYOUTS = {"mini": (16, 4), "8b": (32, 32)}


def decode_step(batch: int, blocks: int, ctx: int, hq: int, hkv: int, dev: torch.device, gen: torch.Generator):
    """``batch`` sequences of ``blocks`` new 32-token blocks over ``ctx`` cached keys each; block-causal."""
    n_per = blocks * BLOCK
    pages_per = math.ceil((ctx + n_per) / PAGE)
    num_pages = batch * pages_per + 1
    perm = torch.randperm(num_pages, generator=torch.Generator().manual_seed(0))
    page_table = perm[:batch * pages_per].view(batch, pages_per)
    positions = torch.arange(ctx, ctx + n_per).repeat(batch)  # [N]
    block_end = (positions - ctx) // BLOCK * BLOCK + BLOCK + ctx  # end of each token's own block
    seq_of = torch.arange(batch).repeat_interleave(n_per)
    slots = page_table[seq_of, positions // PAGE] * PAGE + positions % PAGE
    n = batch * n_per
    meta = AttentionMetadata(
        cu_seqlens_q=torch.arange(0, n + 1, n_per), positions=positions, context_lens=torch.full((batch,), ctx),
        page_table=page_table, slot_mapping=slots, key_lo=torch.zeros(n, dtype=torch.long), key_hi=block_end,
        cache_only=torch.zeros(batch, dtype=torch.bool), logits_indices=torch.arange(n), page_size=PAGE)
    meta.validate()
    meta = AttentionMetadata(**{k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in vars(meta).items()})
    dt = torch.bfloat16
    k_cache = torch.randn(num_pages, PAGE, hkv, HEAD_DIM, device=dev, dtype=dt, generator=gen)
    v_cache = torch.randn(num_pages, PAGE, hkv, HEAD_DIM, device=dev, dtype=dt, generator=gen)
    q = torch.randn(n, hq, HEAD_DIM, device=dev, dtype=dt, generator=gen)
    k = torch.randn(n, hkv, HEAD_DIM, device=dev, dtype=dt, generator=gen)
    v = torch.randn(n, hkv, HEAD_DIM, device=dev, dtype=dt, generator=gen)
    return q, k, v, k_cache, v_cache, meta


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", default="160,544")
    ap.add_argument("--batches", default="1")
    ap.add_argument("--top", type=int, default=3, help="launches shown per shape")
    args = ap.parse_args()
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    scale = HEAD_DIM ** -0.5
    splits_opts = {"none": dict(splits=0), "auto": dict(), "auto,short": dict(tiles_per_split=1)}
    failed = 0
    for (name, (hq, hkv)), batch, blocks, ctx in itertools.product(
            LAYOUTS.items(), (int(b) for b in args.batches.split(",")), (1, 2),
            (int(c) for c in args.contexts.split(","))):
        q, k, v, kc, vc, meta = decode_step(batch, blocks, ctx, hq, hkv, dev, gen)
        REFERENCE_OPS.store_kvcache(k, v, kc, vc, meta.slot_mapping)
        ref = REFERENCE_OPS.paged_attention(q, k, v, kc, vc, meta, scale, None)
        fwd = meta.for_forward()
        g = hq // hkv
        default = bench_graph(lambda: paged_attention(q, k, v, kc, vc, fwd, scale))
        rows = []
        block_qs = [bq for bq in (1, 2, 4, 8, 16, 32) if 16 <= bq * g <= 64]
        for bq, bn, warps, stages, split in itertools.product(block_qs, (32, 64), (2, 4, 8), (2, 3), splits_opts):
            kw = dict(block_q=bq, block_n=bn, num_warps=warps, num_stages=stages, **splits_opts[split])
            try:
                err = rel_err(paged_attention(q, k, v, kc, vc, fwd, scale, **kw), ref)
                ms = bench_graph(lambda: paged_attention(q, k, v, kc, vc, fwd, scale, **kw))
            except Exception as exc:  # e.g. out of shared memory / registers for this tile
                print(f"  skip {kw}: {type(exc).__name__}", flush=True)
                continue
            if err > 2e-2:
                failed += 1
                print(f"  MISMATCH {kw}: rel err {err:.3g}", flush=True)
            rows.append((ms, kw, split))
        rows.sort(key=lambda r: r[0])
        best = " | ".join(f"{ms * 1e3:.1f} us bq={kw['block_q']} bn={kw['block_n']} w={kw['num_warps']} "
                          f"st={kw['num_stages']} split={split}" for ms, kw, split in rows[:args.top])
        print(f"{name} batch={batch} tokens/seq={blocks * BLOCK} ctx={ctx}: default {default * 1e3:.1f} us; best {best}",
              flush=True)
    print("attention_tune:", "MISMATCH" if failed else "all launches match the reference")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
