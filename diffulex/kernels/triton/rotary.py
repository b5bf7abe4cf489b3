"""Per-head q/k RMSNorm (optional) and rotate-half RoPE in one kernel, in place on q and k.

Same contract as ``kernels.reference.qk_norm_rope``; q and k may be strided views of a
fused QKV output (last dim contiguous) and are overwritten. Grid: one program per token and
block of ``BLOCK_H`` heads, q head blocks first, then k head blocks. The head is read as
three column groups: ``[0, R/2)``, ``[R/2, R)`` (the rotated halves) and ``[R, D)`` (passed
through; only normalized). With ``cache`` given, the k-head programs also write their
finished K heads, and the matching V heads, into the paged KV cache at the token's slot
(slots < 0 are skipped): the separate ``store_kvcache`` launch disappears.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from diffulex.kernels.triton._runtime import next_pow2, pdl_enter, pdl_kwargs


@triton.jit
def _qk_norm_rope_kernel(
    q_ptr, k_ptr, pos_ptr, cos_ptr, sin_ptr, qw_ptr, kw_ptr, v_ptr, kc_ptr, vc_ptr, slot_ptr,
    stride_qn, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh, eps,
    HQ: tl.constexpr, HKV: tl.constexpr, HEAD_DIM: tl.constexpr, HALF: tl.constexpr, HALF_PAD: tl.constexpr,
    PASS: tl.constexpr, PASS_PAD: tl.constexpr, BLOCK_H: tl.constexpr, HAS_NORM: tl.constexpr,
    STORE: tl.constexpr, D_PAD: tl.constexpr, PDL: tl.constexpr,
):
    pdl_enter(PDL)
    tok = tl.program_id(0).to(tl.int64)
    hb = tl.program_id(1)
    q_blocks = (HQ + BLOCK_H - 1) // BLOCK_H
    if hb < q_blocks:
        base = q_ptr + tok * stride_qn
        stride_h = stride_qh
        h = hb * BLOCK_H + tl.arange(0, BLOCK_H)
        h_mask = h < HQ
        w_ptr = qw_ptr
    else:
        base = k_ptr + tok * stride_kn
        stride_h = stride_kh
        h = (hb - q_blocks) * BLOCK_H + tl.arange(0, BLOCK_H)
        h_mask = h < HKV
        w_ptr = kw_ptr
    dt = q_ptr.dtype.element_ty
    d1 = tl.arange(0, HALF_PAD)
    m1 = h_mask[:, None] & (d1 < HALF)[None, :]
    p1 = base + h[:, None] * stride_h + d1[None, :]  # [BLOCK_H, HALF_PAD]
    x1 = tl.load(p1, mask=m1, other=0.0).to(tl.float32)
    x2 = tl.load(p1 + HALF, mask=m1, other=0.0).to(tl.float32)
    if PASS > 0:
        d3 = tl.arange(0, PASS_PAD)
        m3 = h_mask[:, None] & (d3 < PASS)[None, :]
        p3 = base + h[:, None] * stride_h + 2 * HALF + d3[None, :]
        x3 = tl.load(p3, mask=m3, other=0.0).to(tl.float32)
    if HAS_NORM:
        ss = tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)
        if PASS > 0:
            ss += tl.sum(x3 * x3, axis=1)
        rstd = (1.0 / tl.sqrt(ss / HEAD_DIM + eps))[:, None]  # [BLOCK_H, 1]
        w1 = tl.load(w_ptr + d1, mask=d1 < HALF, other=0.0).to(tl.float32)[None, :]
        w2 = tl.load(w_ptr + HALF + d1, mask=d1 < HALF, other=0.0).to(tl.float32)[None, :]
        x1 = (w1 * (x1 * rstd).to(dt).to(tl.float32)).to(dt).to(tl.float32)
        x2 = (w2 * (x2 * rstd).to(dt).to(tl.float32)).to(dt).to(tl.float32)
        if PASS > 0:
            w3 = tl.load(w_ptr + 2 * HALF + d3, mask=d3 < PASS, other=0.0).to(tl.float32)[None, :]
            x3 = (w3 * (x3 * rstd).to(dt).to(tl.float32)).to(dt)
            tl.store(p3, x3, mask=m3)
    pos = tl.load(pos_ptr + tok)
    cos = tl.load(cos_ptr + pos * HALF + d1, mask=d1 < HALF, other=0.0)[None, :]  # [1, HALF_PAD] fp32
    sin = tl.load(sin_ptr + pos * HALF + d1, mask=d1 < HALF, other=0.0)[None, :]
    o1 = (x1 * cos - x2 * sin).to(dt)  # [BLOCK_H, HALF_PAD]
    o2 = (x2 * cos + x1 * sin).to(dt)
    tl.store(p1, o1, mask=m1)
    tl.store(p1 + HALF, o2, mask=m1)
    if STORE:
        slot = tl.load(slot_ptr + tok)
        if (hb >= q_blocks) & (slot >= 0):  # K heads: the finished K and the raw V into the cache
            row = slot.to(tl.int64) * (HKV * HEAD_DIM) + h[:, None] * HEAD_DIM  # [BLOCK_H, 1]
            cdt = kc_ptr.dtype.element_ty
            tl.store(kc_ptr + row + d1[None, :], o1.to(cdt), mask=m1)
            tl.store(kc_ptr + row + HALF + d1[None, :], o2.to(cdt), mask=m1)
            if PASS > 0:
                tl.store(kc_ptr + row + 2 * HALF + d3[None, :], x3.to(cdt), mask=m3)
            dv = tl.arange(0, D_PAD)
            mv = h_mask[:, None] & (dv < HEAD_DIM)[None, :]
            v = tl.load(v_ptr + tok * stride_vn + h[:, None] * stride_vh + dv[None, :], mask=mv, other=0.0)
            tl.store(vc_ptr + row + dv[None, :], v.to(vc_ptr.dtype.element_ty), mask=mv)


def qk_norm_rope(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_cache: torch.Tensor,
                 sin_cache: torch.Tensor, q_weight: torch.Tensor | None = None,
                 k_weight: torch.Tensor | None = None, eps: float = 1e-6,
                 cache: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``q: [N, Hq, D]``, ``k: [N, Hkv, D]``, ``positions: [N]``, ``cos/sin_cache: [P, R/2]`` fp32 -> ``(q, k)`` (in place).

    ``cache = (v [N, Hkv, D], k_cache, v_cache [P, page, Hkv, D], slot_mapping [N])``: also write
    the finished K and V at each token's slot (what ``store_kvcache`` does)."""
    n_tok, n_q, head_dim = q.shape
    n_kv = k.shape[1]
    half = cos_cache.shape[1]
    if q.dtype != k.dtype or q.stride(2) != 1 or k.stride(2) != 1:
        raise ValueError("qk_norm_rope: q and k need one dtype and a contiguous last dim")
    if not (cos_cache.is_contiguous() and sin_cache.is_contiguous()) or 2 * half > head_dim:
        raise ValueError(f"qk_norm_rope: contiguous cos/sin caches with 2 * {half} <= head_dim {head_dim} needed")
    if (q_weight is None) != (k_weight is None):
        raise ValueError("qk_norm_rope: pass both q_weight and k_weight, or neither")
    if cache is not None:
        v, k_cache, v_cache, slots = cache
        if v.shape != k.shape or v.stride(2) != 1 or not (k_cache.is_contiguous() and v_cache.is_contiguous()):
            raise ValueError("qk_norm_rope: cache needs v shaped like k (contiguous last dim) and contiguous caches")
        if tuple(k_cache.shape[2:]) != (n_kv, head_dim) or v_cache.shape != k_cache.shape:
            raise ValueError(f"qk_norm_rope: caches {tuple(k_cache.shape)} / {tuple(v_cache.shape)} do not hold "
                             f"{n_kv} KV heads of dim {head_dim}")
    else:
        v, k_cache, v_cache, slots = k, k, k, positions  # placeholders, never touched
    if n_tok == 0:
        return q, k
    block_h = min(16, next_pow2(max(n_q, n_kv)))
    grid = (n_tok, triton.cdiv(n_q, block_h) + triton.cdiv(n_kv, block_h))
    has_norm = q_weight is not None
    pass_dim = head_dim - 2 * half
    _qk_norm_rope_kernel[grid](
        q, k, positions, cos_cache, sin_cache, q_weight if has_norm else cos_cache,
        k_weight if has_norm else cos_cache, v, k_cache, v_cache, slots, q.stride(0), q.stride(1), k.stride(0),
        k.stride(1), v.stride(0), v.stride(1), float(eps),
        HQ=n_q, HKV=n_kv, HEAD_DIM=head_dim, HALF=half, HALF_PAD=next_pow2(half), PASS=pass_dim,
        PASS_PAD=next_pow2(max(pass_dim, 1)), BLOCK_H=block_h, HAS_NORM=has_norm, STORE=cache is not None,
        D_PAD=next_pow2(head_dim), num_warps=4, **pdl_kwargs(q.device),
    )
    return q, k
