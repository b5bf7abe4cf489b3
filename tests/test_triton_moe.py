"""Triton MoE router selection and fused experts equal their PyTorch references (CPU interpreter).

Pins: group-limited top-k ids and weights (pow2 and non-pow2 group sizes, k = 1 without
renormalization); the grouped GEMM for odd T / H / I, experts with more tokens than one
block, unused experts, bf16, and tensor-parallel expert slices; the references themselves
against the router module and StackedExperts.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from triton_interp import interpreted, triton_interpreter  # noqa: F401  (autouse fixture)

with interpreted():  # triton and the kernels read the setting at import: keep it on then
    pytest.importorskip("triton")
    from diffulex.kernels import reference as ref
    from diffulex.kernels.triton.fused_moe import fused_moe, sum_assignments
    from diffulex.kernels.triton.moe_align import ONE_PROGRAM_MAX, moe_align, moe_align_torch
    from diffulex.kernels.triton.moe_router import group_limited_topk, moe_route
    from diffulex.kernels.triton.router_gemm import router_logit_partials
    from diffulex.layers.moe.experts import StackedExperts
    from diffulex.layers.moe.router import GroupLimitedSigmoidRouter
    from diffulex.quantization import dequantize_fp8, quantize_fp8

ROUTERS = [  # (E, n_group, topk_group, top_k, scaling)
    (16, 4, 2, 3, 2.5),
    (24, 4, 3, 5, 1.0),  # group size 6: padded tile
    (8, 2, 1, 1, 1.0),  # top_k 1: no renormalization
    (64, 8, 4, 8, 2.5),  # LLaDA2-like ratios
]


@pytest.mark.parametrize("e,n_group,topk_group,top_k,scaling", ROUTERS)
def test_group_limited_topk_matches_reference_and_router(e, n_group, topk_group, top_k, scaling):
    gen = torch.Generator().manual_seed(e + top_k)
    router = GroupLimitedSigmoidRouter(32, e, top_k, n_group, topk_group, scaling)
    router.weight.data = torch.randn(e, 32, generator=gen) * 0.3
    router.expert_bias.data = torch.randn(e, generator=gen) * 0.1
    x = torch.randn(13, 32, generator=gen)
    logits = F.linear(x, router.weight)
    ids_ref, w_ref = ref.group_limited_topk(logits, router.expert_bias, top_k, n_group, topk_group, scaling)
    ids_mod, w_mod = router(x)
    assert torch.equal(ids_ref, ids_mod)
    torch.testing.assert_close(w_ref, w_mod)
    ids, w = group_limited_topk(logits, router.expert_bias, top_k, n_group, topk_group, scaling)
    assert torch.equal(ids, ids_ref)
    torch.testing.assert_close(w, w_ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("t,h,e,splits,dtype", [
    (3, 80, 16, None, torch.float32),  # H not a multiple of the K tile: the last slice is short
    (13, 256, 24, 4, torch.bfloat16),  # x widened in the kernel; E not a multiple of the E tile
    (70, 64, 16, 2, torch.float32),  # two T tiles; only one K tile, so slice 1 is all zeros
])
def test_router_partials_sum_to_fp32_logits(t, h, e, splits, dtype):
    gen = torch.Generator().manual_seed(t + h)
    x = torch.randn(t, h, generator=gen).to(dtype)
    w = torch.randn(e, h, generator=gen)
    for precision in ("tf32x3", "ieee"):
        partials = router_logit_partials(x, w, splits, precision=precision)
        assert partials.dtype == torch.float32 and partials.shape[1:] == (t, e)
        assert splits is None or partials.shape[0] == splits
        torch.testing.assert_close(partials.sum(0), F.linear(x.float(), w), atol=1e-4, rtol=1e-5)
    with pytest.raises(ValueError, match="power of two"):
        router_logit_partials(x, w, 3)
    with pytest.raises(ValueError, match="precision"):
        router_logit_partials(x, w, precision="tf32")


def test_router_partials_split_count_follows_the_launch_tiles():
    """Without ``splits`` the K axis is cut for the tiles actually launched (a tuning override of the
    tiles included): here 2 T x E tiles and 8 K slices of 32 -> 8 splits, against 4 for K slices of 64."""
    gen = torch.Generator().manual_seed(5)
    x, w = torch.randn(9, 256, generator=gen), torch.randn(24, 256, generator=gen)
    assert router_logit_partials(x, w).shape[0] == 4
    partials = router_logit_partials(x, w, tiles=(16, 16, 32))
    assert partials.shape[0] == 8
    torch.testing.assert_close(partials.sum(0), F.linear(x, w), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("t,extra", [(9, 0), (9, 1), (9, 3), (70, 1)])  # 70 tokens: the mid-size launch
def test_moe_route_equals_reference_with_extra_slots(t, extra):
    """Split-K logits + top-k over the partials pick what the reference router picks, and the
    extra columns name ids E.. with weight 1 (the shared expert's slot)."""
    e, n_group, topk_group, top_k, scaling = 64, 8, 4, 8, 2.5
    gen = torch.Generator().manual_seed(11 + extra)
    router = GroupLimitedSigmoidRouter(128, e, top_k, n_group, topk_group, scaling)
    router.weight.data = torch.randn(e, 128, generator=gen) * 0.3
    router.expert_bias.data = torch.randn(e, generator=gen) * 0.1
    x = torch.randn(t, 128, generator=gen)
    ids_ref, w_ref = ref.moe_route(x, router.weight, router.expert_bias, top_k, n_group, topk_group, scaling, extra)
    assert ids_ref.shape == (t, top_k + extra)
    ids_mod, w_mod = router(x, extra_slots=extra)  # the module's own (published) formulation
    assert torch.equal(ids_mod, ids_ref)
    torch.testing.assert_close(w_mod, w_ref)
    ids, w = moe_route(x, router.weight, router.expert_bias, top_k, n_group, topk_group, scaling, extra)
    assert torch.equal(ids, ids_ref)
    torch.testing.assert_close(w, w_ref, atol=1e-6, rtol=1e-5)
    if extra:
        assert torch.equal(ids[:, top_k:], torch.arange(e, e + extra).expand(t, -1))
        assert torch.equal(w[:, top_k:], torch.ones(t, extra))
    torch.testing.assert_close(w[:, :top_k].sum(1), torch.full((t,), scaling))  # extras not renormalized
    router.kernels = "triton"  # the module's Triton path is the same op
    ids_tri, w_tri = router(x, extra_slots=extra)
    assert torch.equal(ids_tri, ids_ref)


def random_moe(gen, t, h, i, e, k, dtype=torch.float32, skew=False):
    x = torch.randn(t, h, generator=gen).to(dtype)
    w13 = (torch.randn(e, 2 * i, h, generator=gen) * h ** -0.5).to(dtype)
    w2 = (torch.randn(e, h, i, generator=gen) * i ** -0.5).to(dtype)
    scores = torch.rand(t, e, generator=gen)
    if skew:  # most tokens pick experts 0 and 1: runs longer than one block
        scores[:, :2] += 2.0
    ids = scores.topk(k, dim=-1).indices
    weights = torch.rand(t, k, generator=gen)
    return x, ids, weights, w13, w2


MOES = [  # (T, H, I, E, k, block_m)
    (1, 32, 24, 8, 3, None),
    (5, 48, 40, 6, 2, None),
    (13, 32, 16, 8, 3, 16),
    (37, 16, 24, 4, 2, 16),  # ~18 tokens per expert: several blocks per expert
]


@pytest.mark.parametrize("t,h,i,e,k,block_m", MOES)
def test_fused_moe_matches_per_token_reference(t, h, i, e, k, block_m):
    gen = torch.Generator().manual_seed(t * 7 + h)
    x, ids, weights, w13, w2 = random_moe(gen, t, h, i, e, k, skew=t > 30)
    expected = ref.fused_moe(x, ids, weights, w13, w2)
    for swap in (False, True):  # [BM, BN] products, or transposed [BN, BM] (the weight tile on the left)
        out = fused_moe(x, ids, weights, w13, w2, block_m=block_m, swap=swap)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


def test_fused_moe_launch_order_changes_nothing():
    """Column-tile-major programs (n_major) compute the same blocks: identical results."""
    gen = torch.Generator().manual_seed(8)
    x, ids, weights, w13, w2 = random_moe(gen, 37, 48, 40, 4, 2, skew=True)
    assert torch.equal(fused_moe(x, ids, weights, w13, w2, block_m=16, n_major=True),
                       fused_moe(x, ids, weights, w13, w2, block_m=16, n_major=False))


def test_fused_moe_bf16():
    gen = torch.Generator().manual_seed(9)
    x, ids, weights, w13, w2 = random_moe(gen, 11, 64, 48, 8, 4, dtype=torch.bfloat16)
    expected = ref.fused_moe(x.float(), ids, weights, w13.float(), w2.float())
    for swap in (False, True):
        out = fused_moe(x, ids, weights, w13, w2, swap=swap)
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.float(), expected, atol=2e-2, rtol=2e-2)


def test_fused_moe_tensor_parallel_slice_only_adds_local_experts():
    gen = torch.Generator().manual_seed(3)
    x, ids, weights, w13, w2 = random_moe(gen, 9, 32, 16, 8, 3)
    parts = [fused_moe(x, ids, weights, w13[r * 4:(r + 1) * 4], w2[r * 4:(r + 1) * 4], expert_start=r * 4,
                       num_experts=8) for r in range(2)]
    expected_half = ref.fused_moe(x, ids, weights, w13[4:], w2[4:], expert_start=4)
    torch.testing.assert_close(parts[1], expected_half, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(parts[0] + parts[1], ref.fused_moe(x, ids, weights, w13, w2), atol=1e-5, rtol=1e-4)


def test_gelu_tanh_experts_fused_equals_reference_and_diffusion_gemma_loop():
    """DiffusionGemma's GELU-tanh experts: the fused kernel, the reference and the module's loop agree."""
    from diffulex.models.diffusion_gemma_layers import GeluStackedExperts

    gen = torch.Generator().manual_seed(5)
    x, ids, weights, w13, w2 = random_moe(gen, 13, 32, 24, 6, 2, skew=True)
    expected = ref.fused_moe(x, ids, weights, w13, w2, activation="gelu_tanh")
    assert not torch.allclose(expected, ref.fused_moe(x, ids, weights, w13, w2), atol=1e-3)  # not SiLU
    torch.testing.assert_close(fused_moe(x, ids, weights, w13, w2, activation="gelu_tanh"), expected,
                               atol=1e-5, rtol=1e-4)
    experts = GeluStackedExperts(6, 32, 24)
    experts.w13.data, experts.w2.data = w13, w2
    torch.testing.assert_close(experts(x, ids, weights), expected, atol=1e-5, rtol=1e-4)  # the torch loop
    experts.kernels = "triton"  # the fused path through the module (interpreter)
    torch.testing.assert_close(experts(x, ids, weights), expected, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="activation"):
        fused_moe(x, ids, weights, w13, w2, activation="relu")


def _fp8_stacks(w13, w2, block):
    """Per-expert FP8 values and scales of both stacks, and the weights they stand for."""
    (q13, s13), (q2, s2) = [map(torch.stack, zip(*[quantize_fp8(w[e], block) for e in range(w.shape[0])]))
                            for w in (w13, w2)]
    deq = [torch.stack([dequantize_fp8(q[e], s[e], block) for e in range(q.shape[0])]) for q, s in ((q13, s13), (q2, s2))]
    return q13, s13, q2, s2, deq[0], deq[1]


@pytest.mark.parametrize("t,h,i,e,k,block", [
    (7, 80, 48, 6, 2, (128, 128)),  # one scale per expert matrix (block wider than both dims)
    (13, 80, 48, 6, 2, (16, 16)),  # H / I not multiples of the tile; gate and up rows in separate tiles
    (5, 64, 40, 4, 3, (32, 16)),  # K tile shrunk to 16 so that it never straddles two scale columns
])
def test_fp8_fused_moe_equals_reference_on_the_dequantized_weights(t, h, i, e, k, block):
    gen = torch.Generator().manual_seed(t + h + block[1])
    x, ids, weights, w13, w2 = random_moe(gen, t, h, i, e, k)
    q13, s13, q2, s2, d13, d2 = _fp8_stacks(w13, w2, block)
    expected = ref.fused_moe(x, ids, weights, d13, d2)
    fp8 = dict(w13_scale=s13, w2_scale=s2, block=block)
    torch.testing.assert_close(ref.fused_moe(x, ids, weights, q13, q2, **fp8), expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(fused_moe(x, ids, weights, q13, q2, **fp8), expected, atol=1e-5, rtol=1e-4)
    for swap in (False, True):
        torch.testing.assert_close(fused_moe(x, ids, weights, q13, q2, swap=swap, **fp8), expected, atol=1e-5,
                                   rtol=1e-4)
    for mode in ("products", "fp16"):
        torch.testing.assert_close(fused_moe(x, ids, weights, q13, q2, fp8_scale=mode, swap=True, **fp8), expected,
                                   atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fused_moe(x, ids, weights, q13, q2, fp8_scale="products", **fp8), expected,
                               atol=1e-5, rtol=1e-4)
    full = ref.fused_moe(x, ids, weights, w13, w2)
    assert 0 < (expected - full).abs().max() < 0.1 * full.abs().max()  # FP8 rounds, but only a little
    # The module: quantize_weights() after loading, then the loop and the fused path read the FP8 stacks.
    experts = StackedExperts(e, h, i)
    experts.w13.data.copy_(w13)
    experts.w2.data.copy_(w2)
    experts.quantize_weights(block)
    assert experts.w13.dtype == experts.w2.dtype == torch.float8_e4m3fn
    assert torch.equal(experts.w13.view(torch.uint8), q13.view(torch.uint8)) and torch.equal(experts.w2_scale_inv, s2)
    torch.testing.assert_close(experts(x, ids, weights), expected, atol=1e-5, rtol=1e-4)
    experts.kernels = "triton"
    torch.testing.assert_close(experts(x, ids, weights), expected, atol=1e-5, rtol=1e-4)


def test_fp8_fused_moe_bf16_activations():
    gen = torch.Generator().manual_seed(4)
    x, ids, weights, w13, w2 = random_moe(gen, 9, 64, 48, 8, 3)
    q13, s13, q2, s2, d13, d2 = _fp8_stacks(w13, w2, (32, 32))
    expected = ref.fused_moe(x, ids, weights, d13, d2)
    out = fused_moe(x.bfloat16(), ids, weights, q13, q2, w13_scale=s13, w2_scale=s2, block=(32, 32))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, atol=2e-2, rtol=2e-2)


def test_fp8_fused_moe_refuses_inconsistent_scales():
    gen = torch.Generator().manual_seed(2)
    x, ids, weights, w13, w2 = random_moe(gen, 5, 64, 32, 4, 2)
    q13, s13, q2, s2, _, _ = _fp8_stacks(w13, w2, (16, 16))
    with pytest.raises(ValueError, match="w13_scale"):
        fused_moe(x, ids, weights, q13, q2, w13_scale=s13[:, :1], w2_scale=s2, block=(16, 16))
    with pytest.raises(ValueError, match="FP8 experts need both"):
        fused_moe(x, ids, weights, q13, w2, w13_scale=s13, w2_scale=s2, block=(16, 16))
    q13, s13, q2, s2, _, _ = _fp8_stacks(w13, w2, (8, 8))
    with pytest.raises(ValueError, match="multiple of 16"):
        fused_moe(x, ids, weights, q13, q2, w13_scale=s13, w2_scale=s2, block=(8, 8))


def test_reference_matches_stacked_experts():
    gen = torch.Generator().manual_seed(1)
    x, ids, weights, w13, w2 = random_moe(gen, 7, 32, 16, 6, 2)
    experts = StackedExperts(6, 32, 16)
    experts.w13.data, experts.w2.data = w13, w2
    torch.testing.assert_close(ref.fused_moe(x, ids, weights, w13, w2), experts(x, ids, weights),
                               atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("one_program", [True, False])
def test_moe_align_blocks_cover_each_expert_run_once(one_program):
    ids = torch.tensor([[2, 0], [2, 3], [0, 2], [2, 1], [2, 0]])  # expert 2 x5, 0 x3, 1 x1, 3 x1
    order, blk_expert, row0, row_end, counts = moe_align(ids, 4, block_m=2, one_program=one_program)
    assert counts.tolist() == [3, 1, 5, 1]
    used = blk_expert < 4
    assert blk_expert[used].tolist() == [0, 0, 1, 2, 2, 2, 3]
    assert row0[used].tolist() == [0, 2, 3, 4, 6, 8, 9]
    assert row_end[used].tolist() == [3, 3, 4, 9, 9, 9, 10]
    assert (ids.flatten()[order] == torch.tensor([0, 0, 0, 1, 2, 2, 2, 2, 2, 3])).all()


@pytest.mark.parametrize("t,k,e,start,num_experts,block_m", [
    (5, 2, 4, 0, 4, 2),
    (33, 8, 16, 0, 16, 16),  # more assignments than one block, empty experts
    (40, 4, 6, 6, 18, 4),  # a tensor-parallel slice: most ids belong to other ranks
    (300, 8, 64, 0, 64, 16),  # several histogram chunks (two launches: more than one program's limit)
    (100, 9, 64, 0, 64, 16),  # one program: 900 assignments
])
@pytest.mark.parametrize("skew", [False, True])  # skew: one expert has many blocks
def test_moe_align_equals_torch_formulation(t, k, e, start, num_experts, block_m, skew):
    gen = torch.Generator().manual_seed(t)
    scores = torch.rand(t, num_experts, generator=gen)
    if skew:
        scores[:, start] += 2.0
    ids = scores.topk(k, dim=-1).indices
    order, blk_expert, row0, row_end, counts = moe_align(ids, e, block_m, start)
    if t * k <= ONE_PROGRAM_MAX:  # the two-launch path gives the same table
        two = moe_align(ids, e, block_m, start, one_program=False)
        assert torch.equal(two[1], blk_expert) and torch.equal(two[4], counts)
        used = blk_expert < e
        assert torch.equal(two[2][used], row0[used]) and torch.equal(two[3][used], row_end[used])
    r_order, r_expert, r_row0, r_row_end, r_counts = moe_align_torch(ids, e, block_m, start)
    assert torch.equal(counts, r_counts)
    assert torch.equal(blk_expert, r_expert)
    used = r_expert < e
    assert torch.equal(row0[used], r_row0[used]) and torch.equal(row_end[used], r_row_end[used])
    flat = ids.flatten() - start
    key = torch.where((flat >= 0) & (flat < e), flat, e)
    assert sorted(order.tolist()) == list(range(t * k))  # a permutation of the assignments
    assert torch.equal(key[order], key[r_order])  # grouped exactly like the stable sort


@pytest.mark.parametrize("t,k,h,dtype", [(3, 9, 40, torch.bfloat16), (5, 2, 1030, torch.float32), (0, 4, 8, torch.bfloat16)])
def test_sum_assignments_equals_an_ordered_fp32_sum(t, k, h, dtype):
    """The per-assignment outputs ``[T, k, H]`` summed in fp32 in slot order and rounded once: exactly
    that sequence, and torch's ``.sum(1)`` within one rounding (H = 1030: a second, mostly masked H tile)."""
    gen = torch.Generator().manual_seed(t * 100 + k)
    per_assign = torch.randn(t, k, h, generator=gen).to(dtype)
    out = sum_assignments(per_assign)
    assert out.dtype == dtype and out.shape == (t, h)
    acc = torch.zeros(t, h)
    for j in range(k):
        acc += per_assign[:, j].float()
    if dtype == torch.float32:
        assert torch.equal(out, acc)
    else:  # one rounding of the fp32 sum (the interpreter's bf16 cast truncates: within one ulp)
        torch.testing.assert_close(out.float(), acc, atol=0, rtol=2 ** -7)
    torch.testing.assert_close(out, per_assign.sum(1))
    assert torch.equal(sum_assignments(per_assign, torch_sum=True), per_assign.sum(1))
