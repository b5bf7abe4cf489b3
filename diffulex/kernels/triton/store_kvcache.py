"""Paged KV-cache write: ``cache[slot_mapping[i]] = k[i]`` (and v), skipping slots < 0.

One program per new token copies its ``Hkv * D`` K and V values, cast to the cache dtype.
Same contract as ``kernels.reference.store_kvcache``: caches ``[num_pages, page_size, Hkv, D]``,
slot ``= page * page_size + offset``. Limits: ``k``/``v`` may be strided views (e.g. slices of a
fused QKV output) but their last dim must be contiguous; the caches must be contiguous.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from diffulex.kernels.triton._runtime import next_pow2, pdl_enter, pdl_kwargs


@triton.jit
def _store_kvcache_kernel(
    k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
    stride_kn, stride_kh, stride_vn, stride_vh,
    HEAD_DIM: tl.constexpr, NUM_KV_HEADS: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr,
):
    pdl_enter(PDL)
    tok = tl.program_id(0)
    slot = tl.load(slot_ptr + tok)
    if slot < 0:
        return
    offs = tl.arange(0, BLOCK)
    mask = offs < NUM_KV_HEADS * HEAD_DIM
    head = offs // HEAD_DIM
    d = offs % HEAD_DIM
    k = tl.load(k_ptr + tok * stride_kn + head * stride_kh + d, mask=mask)
    v = tl.load(v_ptr + tok * stride_vn + head * stride_vh + d, mask=mask)
    dst = slot.to(tl.int64) * (NUM_KV_HEADS * HEAD_DIM) + offs
    tl.store(k_cache_ptr + dst, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(v_cache_ptr + dst, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def store_kvcache(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write ``k, v: [N, Hkv, D]`` into ``k_cache, v_cache: [P, page, Hkv, D]`` at ``slot_mapping: [N]``."""
    n_tok, n_kv_heads, head_dim = k.shape
    if n_tok == 0:
        return
    if k.stride(2) != 1 or v.stride(2) != 1:
        raise ValueError("store_kvcache: k and v need a contiguous last dim")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("store_kvcache: k_cache and v_cache must be contiguous")
    _store_kvcache_kernel[(n_tok,)](
        k, v, k_cache, v_cache, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        HEAD_DIM=head_dim, NUM_KV_HEADS=n_kv_heads, BLOCK=next_pow2(n_kv_heads * head_dim), **pdl_kwargs(k.device),
    )
