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

Limits: head_dim <= 256 (padded to a power of two >= 16, masked); Hq a multiple of Hkv;
positions < 2**31; the caches ``[num_pages, page_size, Hkv, D]`` share strides and have a
contiguous last dim, as do q/k/v. No split over the key axis: a single sequence with a very
long context and few query tokens runs on few programs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from diffulex.kernels.triton._runtime import is_interpreting, next_pow2
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
def _paged_attention_kernel(
    q_ptr, kn_ptr, vn_ptr, kc_ptr, vc_ptr, o_ptr,
    cu_ptr, pos_ptr, ctx_ptr, pt_ptr, lo_ptr, hi_ptr, cache_only_ptr, blk_seq_ptr, blk_q0_ptr,
    stride_qn, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh, stride_on, stride_oh,
    stride_cp, stride_cs, stride_ch, stride_pt,
    scale, softcap, num_seqs,
    PAGE_SIZE: tl.constexpr, G: tl.constexpr, G_PAD: tl.constexpr, BLOCK_Q: tl.constexpr,
    BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    HAS_CACHE: tl.constexpr, SOFTCAP: tl.constexpr, FP32_DOT: tl.constexpr,
):
    pid = tl.program_id(0)
    kvh = tl.program_id(1)
    seq = tl.load(blk_seq_ptr + pid)
    if seq >= num_seqs:
        return
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
    q = tl.load(q_ptr + tok[:, None] * stride_qn + head[:, None] * stride_qh + d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # [M, D_PAD]
    lo = tl.load(lo_ptr + tok, mask=row_ok, other=0).to(tl.int32)  # [M]
    hi = tl.load(hi_ptr + tok, mask=row_ok, other=0).to(tl.int32)  # [M]; invalid rows see nothing
    lo_min = tl.min(tl.where(row_ok, lo, 2147483647), 0)
    hi_max = tl.max(hi, 0)

    m_i = tl.full([M], float("-inf"), tl.float32)
    l_i = tl.zeros([M], tl.float32)
    acc = tl.zeros([M, D_PAD], tl.float32)
    cols = tl.arange(0, BLOCK_N)

    if HAS_CACHE:
        ctx = tl.load(ctx_ptr + seq).to(tl.int32)
        stop = tl.minimum(ctx, hi_max)
        for start in range((lo_min // BLOCK_N) * BLOCK_N, stop, BLOCK_N):
            kpos = start + cols  # [BN]
            k_ok = kpos < stop
            page = tl.load(pt_ptr + seq * stride_pt + kpos // PAGE_SIZE, mask=k_ok, other=0)
            off = page * stride_cp + (kpos % PAGE_SIZE) * stride_cs + kvh * stride_ch  # [BN]
            kv_mask = k_ok[:, None] & d_ok[None, :]
            k = tl.load(kc_ptr + off[:, None] + d[None, :], mask=kv_mask, other=0.0)
            v = tl.load(vc_ptr + off[:, None] + d[None, :], mask=kv_mask, other=0.0)
            vis = k_ok[None, :] & (kpos[None, :] >= lo[:, None]) & (kpos[None, :] < hi[:, None])
            acc, m_i, l_i = _attend_tile(q, k, v, vis, acc, m_i, l_i, scale, softcap, SOFTCAP, FP32_DOT)

    if tl.load(cache_only_ptr + seq) == 0:
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
    tl.store(o_ptr + tok[:, None] * stride_on + head[:, None] * stride_oh + d[None, :],
             out.to(o_ptr.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


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
) -> torch.Tensor:
    """``q: [N, Hq, D]``, ``k_new, v_new: [N, Hkv, D]``, caches ``[P, page, Hkv, D]`` or None -> ``[N, Hq, D]``.

    ``block_q`` (query tokens per program) overrides the shape heuristic; BLOCK_Q x G is padded to >= 16.
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
    block_n = 64 if block_q * g_pad * d_pad <= 32 * 128 else 32
    memo = getattr(meta, "memo", None)  # per forward (AttentionMetadata.for_forward): shared by the layers
    key = ("paged_attention.query_blocks", block_q)
    if memo is not None and key in memo:
        blk_seq, blk_q0 = memo[key]
    else:
        blk_seq, blk_q0 = query_blocks(meta.cu_seqlens_q, n_tok, block_q)
        if memo is not None:
            memo[key] = (blk_seq, blk_q0)
    kc, vc = (k_cache, v_cache) if has_cache else (k_new, v_new)  # placeholders, never read
    cache_strides = (k_cache.stride(0), k_cache.stride(1), k_cache.stride(2)) if has_cache else (0, 0, 0)
    grid = (blk_seq.shape[0], n_kv_heads)
    _paged_attention_kernel[grid](
        q, k_new, v_new, kc, vc, out,
        meta.cu_seqlens_q, meta.positions, meta.context_lens, meta.page_table, meta.key_lo, meta.key_hi,
        meta.cache_only.view(torch.uint8), blk_seq, blk_q0,
        q.stride(0), q.stride(1), k_new.stride(0), k_new.stride(1), v_new.stride(0), v_new.stride(1),
        out.stride(0), out.stride(1), *cache_strides, max(meta.page_table.stride(0), 1),
        float(scale), float(softcap or 1.0), meta.num_seqs,
        PAGE_SIZE=meta.page_size, G=group, G_PAD=g_pad, BLOCK_Q=block_q, BLOCK_N=block_n,
        HEAD_DIM=head_dim, D_PAD=d_pad, HAS_CACHE=has_cache, SOFTCAP=softcap is not None,
        FP32_DOT=is_interpreting() or q.dtype == torch.float32,
        num_warps=8 if d_pad >= 128 else 4, num_stages=2,
    )
    return out
