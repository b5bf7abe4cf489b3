"""Plain-PyTorch paged KV-cache ops: the correctness oracle and the CPU path."""

from __future__ import annotations

import torch

from diffulex.layers.attention_metadata import AttentionMetadata


def store_kvcache(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write ``k, v: [N, Hkv, D]`` into the paged caches at ``slot_mapping`` (>= 0 only).

    The caches are ``[num_pages, page_size, Hkv, D]``; slot ``= page * page_size + offset``.
    """
    write = slot_mapping >= 0  # [N]
    slots = slot_mapping[write]  # [W]
    k_flat = k_cache.view(-1, *k_cache.shape[2:])  # [num_slots, Hkv, D]
    v_flat = v_cache.view(-1, *v_cache.shape[2:])
    k_flat.index_copy_(0, slots, k[write].to(k_cache.dtype))
    v_flat.index_copy_(0, slots, v[write].to(v_cache.dtype))


def gather_cached(
    cache: torch.Tensor, page_row: torch.Tensor, context_len: int, page_size: int
) -> torch.Tensor:
    """Cached entries of positions ``[0, context_len)`` of one sequence: ``[context_len, Hkv, D]``."""
    pos = torch.arange(context_len, device=cache.device)  # [C]
    slots = page_row[pos // page_size] * page_size + pos % page_size  # [C]
    return cache.view(-1, *cache.shape[2:])[slots]


def paged_attention(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    k_cache: torch.Tensor | None,
    v_cache: torch.Tensor | None,
    meta: AttentionMetadata,
    scale: float,
    softcap: float | None = None,
) -> torch.Tensor:
    """Attention of every query token over its visible keys; returns ``[N, Hq, D]``.

    ``q: [N, Hq, D]``, ``k_new, v_new: [N, Hkv, D]`` (Hq a multiple of Hkv). Keys of a
    sequence are its cached prefix plus (unless ``cache_only``) its new tokens; a key at
    absolute position p is visible to a query iff ``key_lo <= p < key_hi``. Scores and
    softmax are fp32; a query that sees no key gets a zero output.
    """
    n_tok, n_q_heads, head_dim = q.shape
    n_kv_heads = k_new.shape[1]
    if n_q_heads % n_kv_heads:
        raise ValueError(f"paged_attention: {n_q_heads} query heads not a multiple of {n_kv_heads} KV heads")
    group = n_q_heads // n_kv_heads
    out = torch.empty_like(q)
    cu = meta.cu_seqlens_q.tolist()
    context_lens = meta.context_lens.tolist()
    cache_only = meta.cache_only.tolist()
    for s in range(meta.num_seqs):
        a, b, ctx = cu[s], cu[s + 1], context_lens[s]
        if a == b:
            continue
        if ctx > 0 and k_cache is None:
            raise ValueError(f"paged_attention: sequence {s} has context_len {ctx} but no cache was given")
        key_pos = [torch.arange(ctx, device=q.device)]
        keys, values = [], []
        if ctx > 0:
            keys.append(gather_cached(k_cache, meta.page_table[s], ctx, meta.page_size))
            values.append(gather_cached(v_cache, meta.page_table[s], ctx, meta.page_size))
        if not cache_only[s]:
            key_pos.append(meta.positions[a:b])
            keys.append(k_new[a:b])
            values.append(v_new[a:b])
        kpos = torch.cat(key_pos)  # [K]
        ks = torch.cat([t.to(q.dtype) for t in keys]).float()  # [K, Hkv, D]
        vs = torch.cat([t.to(q.dtype) for t in values]).float()  # [K, Hkv, D]
        qs = q[a:b].float().view(b - a, n_kv_heads, group, head_dim)  # [n, Hkv, G, D]

        scores = torch.einsum("nhgd,khd->hgnk", qs, ks) * scale  # [Hkv, G, n, K]
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        visible = (kpos[None, :] >= meta.key_lo[a:b, None]) & (kpos[None, :] < meta.key_hi[a:b, None])  # [n, K]
        scores = scores.masked_fill(~visible, float("-inf"))
        probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # rows with no visible key -> 0
        o = torch.einsum("hgnk,khd->nhgd", probs, vs)  # [n, Hkv, G, D]
        out[a:b] = o.reshape(b - a, n_q_heads, head_dim).to(q.dtype)
    return out
