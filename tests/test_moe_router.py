"""Routers and stacked experts equal a straightforward per-token loop."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffulex.layers.moe import GroupLimitedSigmoidRouter, SoftmaxTopKRouter, StackedExperts

H, E, I = 16, 8, 12


def loop_group_limited(x, weight, bias, top_k, n_group, topk_group, scale):
    """Per token: sigmoid scores, biased group scores (top-2 sum), kept groups, top-k, unbiased weights."""
    ids, weights = [], []
    per_group = E // n_group
    for t in range(x.shape[0]):
        s = torch.sigmoid(weight.float() @ x[t].float())  # [E]
        b = s + bias
        gscore = [sorted(b[g * per_group:(g + 1) * per_group].tolist(), reverse=True)[:2] for g in range(n_group)]
        kept = sorted(range(n_group), key=lambda g: -sum(gscore[g]))[:topk_group]
        cand = [e for e in range(E) if e // per_group in kept]
        chosen = sorted(cand, key=lambda e: -b[e].item())[:top_k]
        w = s[chosen]
        if top_k > 1:
            w = w / w.sum()
        ids.append(chosen)
        weights.append(w * scale)
    return torch.tensor(ids), torch.stack(weights)


def make_router(gen, top_k=3, n_group=4, topk_group=2, scale=2.5):
    router = GroupLimitedSigmoidRouter(H, E, top_k, n_group, topk_group, scale)
    router.weight.data = torch.randn(E, H, generator=gen) * 0.3
    router.expert_bias.data = torch.randn(E, generator=gen) * 0.2
    return router


def test_group_limited_router_matches_loop():
    gen = torch.Generator().manual_seed(0)
    for top_k, n_group, topk_group, scale in [(3, 4, 2, 2.5), (2, 2, 1, 1.0), (1, 4, 3, 1.5)]:
        router = make_router(gen, top_k, n_group, topk_group, scale)
        x = torch.randn(20, H, generator=gen)
        ids, w = router(x)
        ref_ids, ref_w = loop_group_limited(x, router.weight, router.expert_bias, top_k, n_group, topk_group, scale)
        assert torch.equal(ids, ref_ids)
        torch.testing.assert_close(w, ref_w)


def test_group_limit_excludes_best_expert_and_bias_only_steers_selection():
    # Equal logits (zero gate): scores are all 0.5, so selection is decided by the bias alone.
    router = GroupLimitedSigmoidRouter(H, E, top_k=2, n_group=4, topk_group=2, routed_scaling_factor=2.5)
    router.weight.data.zero_()
    # Expert 0 has the best biased score, but its group's top-2 sum (1.5 + 0.0) loses to groups 1, 2.
    router.expert_bias.data = torch.tensor([1.0, -0.5, 0.4, 0.35, 0.3, 0.3, 0.0, 0.0])
    ids, w = router(torch.randn(3, H))
    assert sorted(ids[0].tolist()) == [2, 3]
    assert 0 not in ids.flatten().tolist()
    # Weights use the unbiased (equal) scores: renormalized 0.5 each, times the scaling factor.
    torch.testing.assert_close(w, torch.full((3, 2), 1.25))


def test_scaling_factor_and_no_renorm_for_top1():
    gen = torch.Generator().manual_seed(1)
    router = make_router(gen, top_k=1, n_group=4, topk_group=2, scale=3.0)
    x = torch.randn(5, H, generator=gen)
    ids, w = router(x)
    s = torch.sigmoid(x @ router.weight.T)
    torch.testing.assert_close(w, 3.0 * s.gather(1, ids))


def test_softmax_router_matches_loop():
    gen = torch.Generator().manual_seed(2)
    for norm in (True, False):
        router = SoftmaxTopKRouter(H, E, top_k=3, norm_topk_prob=norm)
        router.weight.data = torch.randn(E, H, generator=gen)
        x = torch.randn(7, H, generator=gen)
        ids, w = router(x)
        for t in range(7):
            p = torch.softmax(router.weight @ x[t], -1)
            order = sorted(range(E), key=lambda e: -p[e].item())[:3]
            assert ids[t].tolist() == order
            ref = p[order] / p[order].sum() if norm else p[order]
            torch.testing.assert_close(w[t], ref)


def expert_mlp(x, gate, up, down):
    return F.linear(F.silu(F.linear(x, gate)) * F.linear(x, up), down)


def test_stacked_experts_match_per_token_loop_and_load_per_expert():
    gen = torch.Generator().manual_seed(3)
    experts = StackedExperts(E, H, I)
    mats = {}
    for e in range(E):
        for part, shape in (("gate", (I, H)), ("up", (I, H)), ("down", (H, I))):
            mats[e, part] = torch.randn(*shape, generator=gen) * 0.2
            param = experts.w2 if part == "down" else experts.w13
            param.weight_loader(param, mats[e, part], (e, part))
    router = make_router(gen)
    x = torch.randn(17, H, generator=gen)
    ids, w = router(x)
    # Only some experts receive tokens: the loop over present experts must skip the rest.
    out = experts(x, ids, w)
    ref = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            ref[t] += w[t, j] * expert_mlp(x[t], mats[e, "gate"], mats[e, "up"], mats[e, "down"])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_expert_loader_skips_experts_of_other_ranks():
    from diffulex.layers.parallel import TPGroup

    experts = StackedExperts(E, H, I, tp=TPGroup(rank=1, size=2))
    assert experts.w13.shape == (E // 2, 2 * I, H)
    experts.w13.data.zero_()
    experts.w13.weight_loader(experts.w13, torch.ones(I, H), (0, "gate"))  # owned by rank 0
    assert experts.w13.abs().sum() == 0
    experts.w13.weight_loader(experts.w13, torch.ones(I, H), (5, "up"))  # local expert 1
    assert experts.w13[1, I:].eq(1).all() and experts.w13[1, :I].eq(0).all()


def test_extra_slot_runs_as_an_always_used_expert_on_the_loop_path():
    """An extra slot (LLaDA2's shared expert) appended by the router: every token uses ids E.. with
    weight 1, and the experts' loop path adds that slot's MLP to the routed sum."""
    gen = torch.Generator().manual_seed(4)
    experts = StackedExperts(E, H, I, extra_slots=1)
    experts.w13_all.copy_(torch.randn(E + 1, 2 * I, H, generator=gen) * 0.2)
    experts.w2_all.copy_(torch.randn(E + 1, H, I, generator=gen) * 0.2)
    router = make_router(gen)
    x = torch.randn(6, H, generator=gen)
    ids, w = router(x)
    ids_x, w_x = router(x, extra_slots=1)
    assert torch.equal(ids_x[:, :-1], ids) and torch.equal(ids_x[:, -1], torch.full((6,), E))
    assert torch.equal(w_x[:, :-1], w) and torch.equal(w_x[:, -1], torch.ones(6))
    w13, w2 = experts.slot(0)
    shared = expert_mlp(x, w13[:I], w13[I:], w2)
    torch.testing.assert_close(experts(x, ids_x, w_x, extra=True), experts(x, ids, w) + shared, atol=1e-5, rtol=1e-5)
