"""Paged varlen attention over a sequence's cached prefix plus its new tokens.

Computes exactly ``kernels.reference.paged_attention`` (the ``AttentionMetadata`` contract):
query token ``i`` of sequence ``s`` attends to the cached positions ``[0, context_lens[s])``
(read through ``page_table``) and, unless ``cache_only[s]``, to the new tokens of ``s`` (at
``positions``), keeping only keys with ``key_lo[i] <= p < key_hi[i]``. That one rule covers
block-causal, prefix-full, causal and sliding-window batches. Optional ``softcap``:
``s = softcap * tanh(s / softcap)``. A query that sees no key gets zeros.

Layout: one program per (block of ``BLOCK_Q`` query tokens of one sequence, KV head). The
tile's M dimension is ``BLOCK_Q x G`` rows (token-major, the G query heads that share the KV
head inside), so each K/V tile is loaded once for the whole head group. Online softmax in
fp32 (exp2), scores and accumulators fp32. Per-query bounds are read in the kernel; the
cached-key loop runs only over ``[min key_lo, min(ctx, max key_hi))`` of the block, and
new-token tiles nobody in the block can see are skipped. The block -> (sequence, first
token) map is built on device with torch ops (no host sync): the grid is the upper bound
``cdiv(N, BLOCK_Q) + S`` and surplus programs exit at once.

Split over the key axis (flash-decoding): when the grid above has too few programs to fill
the GPU (batch 1, few query tokens), a third grid axis of ``splits + 1`` programs shares the
work of each block. A block whose sequence has ``T`` key tiles of context uses
``E = min(splits, T // tiles_per_split)`` shares when ``E >= 2`` (decided on device from the
sequence's own context, so one captured graph serves short and long contexts): program
``z < E`` takes the ``z``-th share of the cached tiles, ``z = splits`` the new tokens, the rest
exit. Each writes its normalized partial output and base-2 log-sum-exp to an fp32 workspace
and bumps a per-(block, KV head) counter; the last one merges the partials into the output and
resets the counter (zeroed once per forward). Blocks with shorter contexts run unsplit on
``z = 0``. The number of splits depends on shapes only (grid size, page-table width), so no
host sync is needed; a page table too short for a splitting context launches no split axis.

Limits: head_dim <= 256 (padded to a power of two >= 16, masked); Hq a multiple of Hkv;
positions < 2**31; the caches ``[num_pages, page_size, Hkv, D]`` share strides and have a
contiguous last dim, as do q/k/v.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from diffulex.kernels.triton._runtime import is_interpreting, next_pow2, pdl_enter, pdl_kwargs, sm_count
from diffulex.layers.attention_metadata import AttentionMetadata

LOG2E = 1.4426950408889634


@triton.jit
def _attend_tile(q, k, v, vis, acc, m_i, l_i, scale, softcap,
                 SOFTCAP: tl.constexpr, FP32_DOT: tl.constexpr):
    # q: [M, D]; k, v: [BN, D]; vis: [M, BN] -> updated (acc [M, D], m_i [M], l_i [M]), base-2 logits.
    if FP32_DOT:
        s = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(k.to(q.dtype)))
    s = s * scale
    if SOFTCAP:
        # tanh(x) = 1 - 2 / (exp(2x) + 1): saturates correctly at +-inf in fp32.
        s = softcap * (1.0 - 2.0 / (tl.exp(2.0 * s / softcap) + 1.0))
    s = tl.where(vis, s * 1.4426950408889634, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that have seen nothing yet
    p = tl.exp2(s - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    if FP32_DOT:
        pv = tl.dot(p, v.to(tl.float32), input_precision="ieee")
    else:
        pv = tl.dot(p.to(q.dtype), v.to(q.dtype))
    acc = acc * alpha[:, None] + pv
    return acc, m_new, l_i


@triton.jit
def _store_out(o_ptr, out, tok, head, d, row_ok, d_ok, stride_on, stride_oh):
    tl.store(o_ptr + tok[:, None] * stride_on + head[:, None] * stride_oh + d[None, :],
             out.to(o_ptr.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _merge_slot(part_ptr, lse_ptr, slot, rows, d, used, merged, den, m_all, M: tl.constexpr, D_PAD: tl.constexpr):
    # Fold one partial (o / l: [M, D_PAD], base-2 lse: [M]) into the running merge; an unused
    # slot (``used`` false) or an empty share (lse -inf) weighs 0. Reads bypass L1 (.cg):
    # other programs wrote them.
    ok = (rows >= 0) & used  # [M]
    lse_z = tl.load(lse_ptr + slot * M + rows, mask=ok, other=float("-inf"), cache_modifier=".cg")
    part_z = tl.load(part_ptr + (slot * M + rows)[:, None] * D_PAD + d[None, :], mask=ok[:, None], other=0.0,
                     cache_modifier=".cg")
    m_new = tl.maximum(m_all, lse_z)
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_all - m_safe)
    w = tl.exp2(lse_z - m_safe)
    return merged * alpha[:, None] + part_z * w[:, None], den * alpha + w, m_new


@triton.jit
def _paged_attention_kernel(
    q_ptr, kn_ptr, vn_ptr, kc_ptr, vc_ptr, o_ptr,
    cu_ptr, pos_ptr, ctx_ptr, pt_ptr, lo_ptr, hi_ptr, cache_only_ptr, blk_seq_ptr, blk_q0_ptr,
    part_ptr, lse_ptr, cnt_ptr,
    stride_qn, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh, stride_on, stride_oh,
    stride_cp, stride_cs, stride_ch, stride_pt,
    scale, softcap, num_seqs,
    PAGE_SIZE: tl.constexpr, G: tl.constexpr, G_PAD: tl.constexpr, BLOCK_Q: tl.constexpr,
    BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    HAS_CACHE: tl.constexpr, SOFTCAP: tl.constexpr, FP32_DOT: tl.constexpr,
    SPLITS: tl.constexpr, TILES_PER_SPLIT: tl.constexpr, PDL: tl.constexpr,
):
    pdl_enter(PDL)
    # SPLITS == 0: one program per (block, KV head) does all keys and writes o. SPLITS > 0:
    # axis 2 has SPLITS + 1 programs per (block, KV head). A block whose sequence's context
    # has T tiles splits into E = min(SPLITS, T // TILES_PER_SPLIT) shares when E >= 2:
    # program z < E takes the z-th share of the cached tiles (z in [E, SPLITS) idle),
    # z == SPLITS the new tokens; each writes its partial (o / l and the base-2 lse) to the
    # workspace and the last one to finish (a per-(block, head) counter) merges them into o
    # and resets the counter. Shorter blocks do not split: z == 0 does all, the rest idle.
    pid = tl.program_id(0)
    kvh = tl.program_id(1)
    z = tl.program_id(2)
    seq = tl.load(blk_seq_ptr + pid)
    if seq >= num_seqs:
        return
    split = False
    shares = 0
    if SPLITS > 0:  # from the sequence's context alone, so every program of the block agrees
        shares = tl.minimum(tl.cdiv(tl.load(ctx_ptr + seq).to(tl.int32), BLOCK_N) // TILES_PER_SPLIT, SPLITS)
        split = shares >= 2
        if (z > 0) & ((shares < 2) | ((z >= shares) & (z < SPLITS))):
            return  # idle: an unsplit block (z == 0 does it all) or a share this block does not use
    q0 = tl.load(blk_q0_ptr + pid)
    seq_start = tl.load(cu_ptr + seq)
    seq_end = tl.load(cu_ptr + seq + 1)

    M: tl.constexpr = BLOCK_Q * G_PAD
    rows = tl.arange(0, M)
    tok = q0 + rows // G_PAD  # [M]
    g = rows % G_PAD
    row_ok = (tok < seq_end) & (g < G)
    head = kvh * G + g
    d = tl.arange(0, D_PAD)
    d_ok = d < HEAD_DIM
    lo = tl.load(lo_ptr + tok, mask=row_ok, other=0).to(tl.int32)  # [M]
    hi = tl.load(hi_ptr + tok, mask=row_ok, other=0).to(tl.int32)  # [M]; invalid rows see nothing
    lo_min = tl.min(tl.where(row_ok, lo, 2147483647), 0)
    hi_max = tl.max(hi, 0)

    # This program's cached key range [begin, stop) and whether it takes the new tokens.
    begin = (lo_min // BLOCK_N) * BLOCK_N
    stop = begin
    if HAS_CACHE:
        stop = tl.minimum(tl.load(ctx_ptr + seq).to(tl.int32), hi_max)
    do_new = z == 0
    if SPLITS > 0:
        if split:  # z < SPLITS: the z-th share of the cached tiles; z == SPLITS: the new tokens
            per = tl.cdiv(tl.cdiv(tl.maximum(stop - begin, 0), BLOCK_N), shares) * BLOCK_N
            stop = tl.minimum(stop, begin + (z + 1) * per)
            begin = begin + z * per
            do_new = z == SPLITS

    m_i = tl.full([M], float("-inf"), tl.float32)
    l_i = tl.zeros([M], tl.float32)
    acc = tl.zeros([M, D_PAD], tl.float32)
    cols = tl.arange(0, BLOCK_N)
    q = tl.load(q_ptr + tok[:, None] * stride_qn + head[:, None] * stride_qh + d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # [M, D_PAD]

    if HAS_CACHE:
        for start in range(begin, stop, BLOCK_N):
            kpos = start + cols  # [BN]
            k_ok = kpos < stop
            page = tl.load(pt_ptr + seq * stride_pt + kpos // PAGE_SIZE, mask=k_ok, other=0)
            off = page * stride_cp + (kpos % PAGE_SIZE) * stride_cs + kvh * stride_ch  # [BN]
            kv_mask = k_ok[:, None] & d_ok[None, :]
            k = tl.load(kc_ptr + off[:, None] + d[None, :], mask=kv_mask, other=0.0)
            v = tl.load(vc_ptr + off[:, None] + d[None, :], mask=kv_mask, other=0.0)
            vis = k_ok[None, :] & (kpos[None, :] >= lo[:, None]) & (kpos[None, :] < hi[:, None])
            acc, m_i, l_i = _attend_tile(q, k, v, vis, acc, m_i, l_i, scale, softcap, SOFTCAP, FP32_DOT)

    if do_new and tl.load(cache_only_ptr + seq) == 0:
        n_new = (seq_end - seq_start).to(tl.int32)
        for j0 in range(0, n_new, BLOCK_N):
            j = j0 + cols
            j_ok = j < n_new
            kpos = tl.load(pos_ptr + seq_start + j, mask=j_ok, other=-1).to(tl.int32)  # [BN]
            vis = j_ok[None, :] & (kpos[None, :] >= lo[:, None]) & (kpos[None, :] < hi[:, None])
            if tl.max(tl.max(vis.to(tl.int32), 1), 0) > 0:
                src = seq_start + j
                kv_mask = j_ok[:, None] & d_ok[None, :]
                k = tl.load(kn_ptr + src[:, None] * stride_kn + kvh * stride_kh + d[None, :], mask=kv_mask, other=0.0)
                v = tl.load(vn_ptr + src[:, None] * stride_vn + kvh * stride_vh + d[None, :], mask=kv_mask, other=0.0)
                acc, m_i, l_i = _attend_tile(q, k, v, vis, acc, m_i, l_i, scale, softcap, SOFTCAP, FP32_DOT)

    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    if not split:
        if z == 0:
            _store_out(o_ptr, out, tok, head, d, row_ok, d_ok, stride_on, stride_oh)
    else:
        # Workspace slots of this (block, KV head): [SPLITS + 1] x [M, D_PAD] partials, [M] lse.
        pair = pid * tl.num_programs(1) + kvh
        slot = pair * (SPLITS + 1)
        tl.store(part_ptr + ((slot + z) * M + rows)[:, None] * D_PAD + d[None, :], out)
        tl.store(lse_ptr + (slot + z) * M + rows,
                 tl.where(l_i > 0, m_i + tl.log2(tl.where(l_i > 0, l_i, 1.0)), float("-inf")))
        tl.debug_barrier()  # every thread's partial is written before the counter moves
        if tl.atomic_add(cnt_ptr + pair, 1, sem="acq_rel") == shares:  # the last of shares + 1
            m_all = tl.full([M], float("-inf"), tl.float32)
            den = tl.zeros([M], tl.float32)
            merged = tl.zeros([M, D_PAD], tl.float32)
            for zz in range(SPLITS):  # the cached-key shares this block used, then the new tokens
                merged, den, m_all = _merge_slot(part_ptr, lse_ptr, slot + zz, rows, d, rows * 0 + zz < shares,
                                                 merged, den, m_all, M, D_PAD)
            merged, den, m_all = _merge_slot(part_ptr, lse_ptr, slot + SPLITS, rows, d, rows >= 0,
                                             merged, den, m_all, M, D_PAD)
            out = merged / tl.where(den > 0, den, 1.0)[:, None]  # sees nothing: zeros
            _store_out(o_ptr, out, tok, head, d, row_ok, d_ok, stride_on, stride_oh)
            tl.atomic_xchg(cnt_ptr + pair, 0)  # ready for the next layer / replay


def query_blocks(cu_seqlens_q: torch.Tensor, num_tokens: int, block_q: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Device-side map of grid blocks to (sequence, first query token); no host sync.

    Returns ``blk_seq, blk_q0: [cdiv(N, block_q) + S]``; ``blk_seq == S`` marks a surplus block.
    """
    num_seqs = cu_seqlens_q.shape[0] - 1
    lens = cu_seqlens_q[1:] - cu_seqlens_q[:-1]  # [S]
    n_blocks = (lens + block_q - 1) // block_q  # [S]
    ends = n_blocks.cumsum(0)  # [S]
    b = torch.arange(triton.cdiv(num_tokens, block_q) + num_seqs, device=cu_seqlens_q.device)  # [B]
    blk_seq = torch.searchsorted(ends, b, right=True)  # [B] in [0, S]
    s = blk_seq.clamp(max=num_seqs - 1)
    blk_q0 = cu_seqlens_q[s] + (b - (ends - n_blocks)[s]) * block_q  # [B]
    return blk_seq, blk_q0


def _block_q(n_tok: int, n_kv_heads: int, g_pad: int, d_pad: int) -> int:
    """Query tokens per program from shapes only: 64-row tiles only when that still fills the GPU."""
    block_m = 64 if triton.cdiv(n_tok * g_pad, 64) * n_kv_heads >= 128 else 16
    if d_pad > 128:
        block_m = min(block_m, 32)
    return max(1, block_m // g_pad)


_MAX_SPLITS = 16
# Contexts shorter than this many keys never split (two shares of two 64-key tiles): CUDA graphs
# give such steps a page table this short (layers/graphs.py), so their launch has no split axis.
SHORT_CONTEXT_KEYS = 256


def _num_splits(programs: int, max_keys: int, block_n: int, min_split_tiles: int, device: torch.device) -> int:
    """Cache splits per block from shapes only: 0 (none) when the unsplit grid fills the SMs or
    the page table cannot hold a context of ``min_split_tiles`` tiles (the shortest that splits),
    else enough for about two waves, at most one per cached key tile the page table can hold."""
    if programs >= sm_count(device) or max_keys <= min_split_tiles * block_n:
        return 0
    want = min(-(-2 * sm_count(device) // max(programs, 1)), -(-max_keys // block_n), _MAX_SPLITS)
    return want if want >= 2 else 0


def paged_attention(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    k_cache: torch.Tensor | None,
    v_cache: torch.Tensor | None,
    meta: AttentionMetadata,
    scale: float,
    softcap: float | None = None,
    block_q: int | None = None,
    splits: int | None = None,
    tiles_per_split: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> torch.Tensor:
    """``q: [N, Hq, D]``, ``k_new, v_new: [N, Hkv, D]``, caches ``[P, page, Hkv, D]`` or None -> ``[N, Hq, D]``.

    ``block_q`` (query tokens per program) overrides the shape heuristic; BLOCK_Q x G is padded to >= 16.
    ``splits`` (cache splits per block, 0 = none) overrides the split heuristic; it applies only with a cache,
    and on device only to blocks of sequences whose context gives at least two shares of ``tiles_per_split``
    key tiles (default: ``SHORT_CONTEXT_KEYS`` keys of context at least). ``block_n`` (keys per
    tile), ``num_warps`` and ``num_stages`` override the launch (``experiments/attention_tune.py``).
    """
    n_tok, n_q_heads, head_dim = q.shape
    n_kv_heads = k_new.shape[1]
    if n_q_heads % n_kv_heads:
        raise ValueError(f"paged_attention: {n_q_heads} query heads not a multiple of {n_kv_heads} KV heads")
    if head_dim > 256:
        raise ValueError(f"paged_attention: head_dim {head_dim} > 256 is not supported by the Triton kernel")
    for name, t in (("q", q), ("k_new", k_new), ("v_new", v_new)):
        if t.stride(2) != 1:
            raise ValueError(f"paged_attention: {name} needs a contiguous last dim")
    out = torch.empty_like(q)
    if n_tok == 0 or meta.num_seqs == 0:
        return out
    has_cache = k_cache is not None
    if has_cache and (k_cache.stride() != v_cache.stride() or k_cache.stride(3) != 1):
        raise ValueError("paged_attention: k_cache and v_cache need equal strides and a contiguous last dim")
    group = n_q_heads // n_kv_heads
    g_pad, d_pad = next_pow2(group), max(16, next_pow2(head_dim))
    block_q = max(block_q or _block_q(n_tok, n_kv_heads, g_pad, d_pad), triton.cdiv(16, g_pad))  # tl.dot: M >= 16
    # Gathered K/V tiles carry a 64-bit pointer per element: larger tiles spill (sm_90, 8 warps).
    block_n = block_n or (64 if block_q * g_pad * d_pad <= 32 * 128 else 32)
    memo = getattr(meta, "memo", None)  # per forward (AttentionMetadata.for_forward): shared by the layers
    key = ("paged_attention.query_blocks", block_q)
    if memo is not None and key in memo:
        blk_seq, blk_q0 = memo[key]
    else:
        blk_seq, blk_q0 = query_blocks(meta.cu_seqlens_q, n_tok, block_q)
        if memo is not None:
            memo[key] = (blk_seq, blk_q0)
    if tiles_per_split is None:
        tiles_per_split = max(1, SHORT_CONTEXT_KEYS // (2 * block_n))
    kc, vc = (k_cache, v_cache) if has_cache else (k_new, v_new)  # placeholders, never read
    cache_strides = (k_cache.stride(0), k_cache.stride(1), k_cache.stride(2)) if has_cache else (0, 0, 0)
    if not has_cache:
        splits = 0
    elif splits is None:  # active blocks x KV heads; the page table's width bounds the cached keys
        splits = _num_splits(triton.cdiv(n_tok, block_q) * n_kv_heads, meta.page_table.shape[1] * meta.page_size,
                             block_n, 2 * tiles_per_split, q.device)
    grid = (blk_seq.shape[0], n_kv_heads, splits + 1 if splits else 1)
    if splits:  # workspace per (block, KV head, split); counters zeroed once per forward, reset by the kernel
        slots, m_rows = grid[0] * n_kv_heads * (splits + 1), block_q * g_pad
        part = torch.empty((slots, m_rows, d_pad), dtype=torch.float32, device=q.device)
        lse = torch.empty((slots, m_rows), dtype=torch.float32, device=q.device)
        ckey = ("paged_attention.counters", grid[0] * n_kv_heads)
        counters = memo.get(ckey) if memo is not None else None
        if counters is None:
            counters = torch.zeros(grid[0] * n_kv_heads, dtype=torch.int32, device=q.device)
            if memo is not None:
                memo[ckey] = counters
    else:  # placeholders, never touched (of the dtypes the split branch compiles for)
        part, lse, counters = out, out, torch.empty(1, dtype=torch.int32, device=q.device)
    _paged_attention_kernel[grid](
        q, k_new, v_new, kc, vc, out,
        meta.cu_seqlens_q, meta.positions, meta.context_lens, meta.page_table, meta.key_lo, meta.key_hi,
        meta.cache_only.view(torch.uint8), blk_seq, blk_q0, part, lse, counters,
        q.stride(0), q.stride(1), k_new.stride(0), k_new.stride(1), v_new.stride(0), v_new.stride(1),
        out.stride(0), out.stride(1), *cache_strides, max(meta.page_table.stride(0), 1),
        float(scale), float(softcap or 1.0), meta.num_seqs,
        PAGE_SIZE=meta.page_size, G=group, G_PAD=g_pad, BLOCK_Q=block_q, BLOCK_N=block_n,
        HEAD_DIM=head_dim, D_PAD=d_pad, HAS_CACHE=has_cache, SOFTCAP=softcap is not None,
        FP32_DOT=is_interpreting() or q.dtype == torch.float32, SPLITS=splits, TILES_PER_SPLIT=tiles_per_split,
        num_warps=num_warps or (8 if d_pad >= 128 else 4), num_stages=num_stages or 2, **pdl_kwargs(q.device),
    )
    return out
