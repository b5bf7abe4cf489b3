"""Triton RMSNorm (+ residual), q/k-norm + RoPE and SiLU-and-mul equal their PyTorch references (CPU interpreter).

Pins: odd hidden sizes, strided rows, bf16 roundings (the residual stream is rounded before
the norm), partial rotary with a pass-through part, GQA head counts, views of a fused QKV
output written in place, and the references against the formulas of the published modules.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from triton_interp import interpreted, triton_interpreter  # noqa: F401  (autouse fixture)

with interpreted():
    pytest.importorskip("triton")
    from diffulex.kernels import reference as ref
    from diffulex.kernels.triton.activation import silu_and_mul
    from diffulex.kernels.triton.norm import rms_norm
    from diffulex.kernels.triton.rotary import qk_norm_rope
    from diffulex.layers.rotary import RotaryEmbedding


def published_rms_norm(x, w, eps):
    """Llama-style RMSNorm as the published modules write it."""
    xf = x.float()
    return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("hidden", [48, 100])
def test_rms_norm_with_and_without_residual(dtype, hidden):
    gen = torch.Generator().manual_seed(hidden)
    x = (torch.randn(7, hidden, generator=gen) * 3).to(dtype)
    res = torch.randn(7, hidden, generator=gen).to(dtype)
    w = (1 + 0.1 * torch.randn(hidden, generator=gen)).to(dtype)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(ref.rms_norm(x, w, 1e-6), published_rms_norm(x, w, 1e-6), atol=0, rtol=0)
    torch.testing.assert_close(rms_norm(x, w, 1e-6), ref.rms_norm(x, w, 1e-6), **tol)
    out_ref, stream_ref = ref.rms_norm(x, w, 1e-6, res)
    assert torch.equal(stream_ref, x + res)
    torch.testing.assert_close(out_ref, published_rms_norm(x + res, w, 1e-6), atol=0, rtol=0)
    out, stream = rms_norm(x, w, 1e-6, res)
    if dtype == torch.float32:
        assert torch.equal(stream, stream_ref)
    else:  # the interpreter rounds fp32 -> bf16 toward zero (the GPU rounds to nearest): one ulp
        torch.testing.assert_close(stream, stream_ref, atol=0, rtol=8e-3)
    torch.testing.assert_close(out, out_ref, **tol)


def test_rms_norm_strided_rows_and_3d():
    gen = torch.Generator().manual_seed(0)
    big = torch.randn(5, 3, 40, generator=gen)
    x = big[:, 1:, 8:40]  # [5, 2, 32], rows strided
    w = torch.rand(32, generator=gen)
    torch.testing.assert_close(rms_norm(x.contiguous(), w, 1e-5), ref.rms_norm(x, w, 1e-5))


def fused_qkv(gen, n, hq, hkv, d, dtype):
    qkv = torch.randn(n, hq + 2 * hkv, d, generator=gen).to(dtype)
    return qkv, qkv.split([hq, hkv, hkv], dim=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("hq,hkv,d,rot,norm", [
    (4, 2, 16, 16, False),  # full rotary, GQA
    (4, 1, 16, 8, True),  # partial rotary (LLaDA2-style) with q/k norm
    (3, 3, 12, 6, True),  # non-pow2 heads, half and pass-through widths
    (20, 4, 32, 32, True),  # more heads than one program's block
])
def test_qk_norm_rope_matches_reference_in_place(dtype, hq, hkv, d, rot, norm):
    gen = torch.Generator().manual_seed(hq * d + rot)
    rope = RotaryEmbedding(d, rot, 64, 10000.0)
    positions = torch.tensor([5, 0, 63, 17, 17, 2])
    qkv, (q, k, v) = fused_qkv(gen, 6, hq, hkv, d, dtype)
    qw = (1 + 0.1 * torch.randn(d, generator=gen)).to(dtype) if norm else None
    kw = (1 + 0.1 * torch.randn(d, generator=gen)).to(dtype) if norm else None
    q_ref, k_ref = ref.qk_norm_rope(q.clone(), k.clone(), positions, rope.cos_cache, rope.sin_cache, qw, kw, 1e-6)
    v_before = v.clone()
    q_out, k_out = qk_norm_rope(q, k, positions, rope.cos_cache, rope.sin_cache, qw, kw, 1e-6)
    assert q_out.data_ptr() == q.data_ptr() and k_out.data_ptr() == k.data_ptr()  # in place, in the QKV buffer
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=3e-2, rtol=2e-2)
    torch.testing.assert_close(q_out, q_ref, **tol)
    torch.testing.assert_close(k_out, k_ref, **tol)
    assert torch.equal(qkv[:, hq + hkv:], v_before)  # v untouched


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("hq,hkv,d,rot,norm", [(4, 2, 16, 8, True), (3, 3, 12, 12, False), (20, 4, 32, 32, True)])
def test_qk_norm_rope_writes_the_kv_cache(dtype, hq, hkv, d, rot, norm):
    """With ``cache`` the kernel also stores the finished K (after norm + RoPE, pass-through dims
    included) and V at each token's slot, skipping slots < 0: what the reference's separate
    ``store_kvcache`` writes; q and k come out as without the cache."""
    gen = torch.Generator().manual_seed(hq + d + rot)
    rope = RotaryEmbedding(d, rot, 64, 10000.0)
    positions = torch.tensor([5, 0, 63, 17, 17, 2])
    slots = torch.tensor([9, -1, 0, 31, 4, 17])
    _, (q, k, v) = fused_qkv(gen, 6, hq, hkv, d, dtype)
    qw = (1 + 0.1 * torch.randn(d, generator=gen)).to(dtype) if norm else None
    kw = (1 + 0.1 * torch.randn(d, generator=gen)).to(dtype) if norm else None
    caches = {name: (torch.full((4, 8, hkv, d), 7.0, dtype=dtype), torch.full((4, 8, hkv, d), 7.0, dtype=dtype))
              for name in ("ref", "tri")}
    q_ref, k_ref = ref.qk_norm_rope(q.clone(), k.clone(), positions, rope.cos_cache, rope.sin_cache, qw, kw, 1e-6,
                                    cache=(v, *caches["ref"], slots))
    q_out, k_out = qk_norm_rope(q, k, positions, rope.cos_cache, rope.sin_cache, qw, kw, 1e-6,
                                cache=(v, *caches["tri"], slots))
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=3e-2, rtol=2e-2)
    torch.testing.assert_close(q_out, q_ref, **tol)
    torch.testing.assert_close(k_out, k_ref, **tol)
    (kc_ref, vc_ref), (kc, vc) = caches["ref"], caches["tri"]
    torch.testing.assert_close(kc, kc_ref, **tol)
    assert torch.equal(vc, vc_ref)  # V is copied, not transformed
    flat = kc.view(-1, hkv, d)
    torch.testing.assert_close(flat[slots[slots >= 0]], k_out[slots >= 0], atol=0, rtol=0)  # the K it returns
    untouched = torch.ones(32, dtype=torch.bool)
    untouched[slots[slots >= 0]] = False
    assert (flat[untouched] == 7).all() and (vc.view(-1, hkv, d)[untouched] == 7).all()  # slot -1 wrote nothing


def test_qk_norm_rope_reference_is_the_published_formula():
    gen = torch.Generator().manual_seed(3)
    rope = RotaryEmbedding(16, 8, 32, 10000.0)
    q, k = torch.randn(4, 2, 16, generator=gen), torch.randn(4, 1, 16, generator=gen)
    w = torch.rand(16, generator=gen)
    pos = torch.tensor([3, 1, 31, 0])
    q_out, _ = ref.qk_norm_rope(q, k, pos, rope.cos_cache, rope.sin_cache, w, w, 1e-6)
    qn = published_rms_norm(q, w, 1e-6)
    inv = 1.0 / (10000.0 ** (torch.arange(0, 8, 2, dtype=torch.float64) / 8))
    ang = pos[:, None].double() * inv  # [N, 4]
    cos, sin = ang.cos().float()[:, None], ang.sin().float()[:, None]
    x1, x2 = qn[..., :4], qn[..., 4:8]
    expect = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, qn[..., 8:]], dim=-1)
    torch.testing.assert_close(q_out, expect)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("inter", [24, 1500])
def test_silu_and_mul(dtype, inter):
    gen = torch.Generator().manual_seed(inter)
    x = (torch.randn(5, 2 * inter, generator=gen) * 4).to(dtype)
    gate, up = x.chunk(2, dim=-1)
    assert torch.equal(ref.silu_and_mul(x), F.silu(gate) * up)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(silu_and_mul(x), ref.silu_and_mul(x), **tol)
