"""Group-limited top-k selection of the LLaDA2 / DeepSeek-V3 router, one program per token.

From router logits ``[T, E]``, or their split-K partial sums ``[S, T, E]`` (``router_gemm``:
the ``S`` slices are loaded together and summed in a fixed order), it computes what
``GroupLimitedSigmoidRouter`` does after its linear layer, in one launch instead of ~15:
``score = sigmoid(logit)``; ``biased = score + expert_bias``; each of ``n_group`` groups
scores the sum of its top-2 biased scores; the best ``topk_group`` groups are kept; the
``top_k`` best biased experts inside them are chosen; their weights are the *unbiased*
scores, renormalized to sum 1 when ``top_k > 1`` (``+1e-20``), times
``routed_scaling_factor``. Ties go to the lowest group / expert id (torch leaves them
unspecified). Output ids are in descending biased-score order. ``extra_slots = X`` appends X
columns that every token uses with weight 1: ids ``E .. E + X - 1`` (a shared expert kept as
extra slots of the stacked experts, see ``StackedExperts``), so no concatenation follows.

Limits: the whole row of E experts is held by one program (fine for E <= a few thousand);
top_k and topk_group are unrolled at compile time.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from diffulex.kernels.triton._runtime import next_pow2, pdl_enter, pdl_kwargs
from diffulex.kernels.triton.router_gemm import router_logit_partials

def topk_warps(n_tok: int) -> int:
    """Warps of a token's program (``experiments/moe_small_tune.py``, H100, 256 experts): the selection
    is a chain of reductions over the row, cheaper with fewer warps once the grid fills the GPU
    (2 warps: 6.4 vs 6.9 us at 512 tokens, 11.5 vs 18.1 us at 2,048); 4 at decode sizes."""
    return 4 if n_tok <= 64 else 2



@triton.jit
def _group_limited_topk_kernel(
    logits_ptr, bias_ptr, ids_ptr, weights_ptr, stride_ls, stride_lt, scaling,
    E: tl.constexpr, N_GROUP: tl.constexpr, NG_PAD: tl.constexpr, GROUP_SIZE: tl.constexpr,
    GS_PAD: tl.constexpr, TOPK_GROUP: tl.constexpr, TOP_K: tl.constexpr, K_PAD: tl.constexpr,
    SPLITS: tl.constexpr, EXTRA: tl.constexpr, X_PAD: tl.constexpr, PDL: tl.constexpr,
):
    pdl_enter(PDL)
    t = tl.program_id(0)
    grp = tl.arange(0, NG_PAD)  # [G]
    col = tl.arange(0, GS_PAD)  # [C]
    ok = (grp[:, None] < N_GROUP) & (col[None, :] < GROUP_SIZE)  # [G, C]
    expert = grp[:, None] * GROUP_SIZE + col[None, :]  # [G, C]
    if SPLITS == 1:
        logit = tl.load(logits_ptr + t * stride_lt + expert, mask=ok, other=0.0).to(tl.float32)
    else:  # split-K partial logits [S, T, E]: one [S, G, C] load, summed in a fixed order
        s = tl.arange(0, SPLITS)[:, None, None]
        part = tl.load(logits_ptr + s * stride_ls + t * stride_lt + expert[None, :, :], mask=ok[None, :, :],
                       other=0.0)  # [S, G, C]
        logit = tl.sum(part.to(tl.float32), 0)
    score = tl.sigmoid(logit)
    biased = tl.where(ok, score + tl.load(bias_ptr + expert, mask=ok, other=0.0), float("-inf"))

    # Group score: sum of the two largest biased scores (a tied maximum counts twice).
    max1 = tl.max(biased, 1)  # [G]
    first = tl.min(tl.where(biased == max1[:, None], col[None, :], GS_PAD), 1)  # [G]
    max2 = tl.max(tl.where(col[None, :] == first[:, None], float("-inf"), biased), 1)
    group_score = tl.where(grp < N_GROUP, max1 + max2, float("-inf"))
    keep = grp < 0
    for _ in tl.static_range(TOPK_GROUP):
        best = tl.max(group_score, 0)
        g = tl.min(tl.where(group_score == best, grp, NG_PAD), 0)
        keep = keep | (grp == g)
        group_score = tl.where(grp == g, float("-inf"), group_score)

    cand = tl.where(keep[:, None] & ok, biased, float("-inf"))  # [G, C]
    slot = tl.arange(0, K_PAD)
    ids = tl.zeros([K_PAD], tl.int32)
    weights = tl.zeros([K_PAD], tl.float32)
    for i in tl.static_range(TOP_K):
        best = tl.max(tl.max(cand, 1), 0)
        e = tl.min(tl.min(tl.where(cand == best, expert, E), 1), 0)
        w = tl.sum(tl.sum(tl.where((expert == e) & ok, score, 0.0), 1), 0)  # padding aliases ids
        ids = tl.where(slot == i, e, ids)
        weights = tl.where(slot == i, w, weights)
        cand = tl.where(expert == e, float("-inf"), cand)
    if TOP_K > 1:
        weights = weights / (tl.sum(weights, 0) + 1e-20)
    row = t * (TOP_K + EXTRA)
    tl.store(ids_ptr + row + slot, ids.to(tl.int64), mask=slot < TOP_K)
    tl.store(weights_ptr + row + slot, weights * scaling, mask=slot < TOP_K)
    if EXTRA > 0:  # slots every token uses with weight 1: ids E .. E + EXTRA - 1
        xs = tl.arange(0, X_PAD)
        tl.store(ids_ptr + row + TOP_K + xs, (E + xs).to(tl.int64), mask=xs < EXTRA)
        tl.store(weights_ptr + row + TOP_K + xs, tl.full([X_PAD], 1.0, tl.float32), mask=xs < EXTRA)


def group_limited_topk(
    logits: torch.Tensor,
    expert_bias: torch.Tensor,
    top_k: int,
    n_group: int,
    topk_group: int,
    routed_scaling_factor: float,
    extra_slots: int = 0,
    num_warps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits: [T, E]`` (any float dtype, read as fp32) or split-K partials ``[S, T, E]`` fp32 (S a
    power of two), ``expert_bias: [E]`` -> ``(ids [T, k + X] long, weights [T, k + X] fp32)``, X =
    ``extra_slots`` (ids E.., weight 1). ``num_warps``: of each token's program (default
    :func:`topk_warps`)."""
    partials = logits if logits.dim() == 3 else logits.unsqueeze(0)  # [S, T, E]
    splits, n_tok, n_experts = partials.shape
    if splits & (splits - 1):
        raise ValueError(f"group_limited_topk: {splits} partial slices; expected a power of two")
    if n_experts % n_group or n_experts // n_group < 2:
        raise ValueError(f"group_limited_topk: {n_experts} experts do not split into {n_group} groups of >= 2")
    if partials.stride(2) != 1 or not expert_bias.is_contiguous():
        raise ValueError("group_limited_topk: logits rows and expert_bias must be contiguous")
    ids = torch.empty(n_tok, top_k + extra_slots, dtype=torch.long, device=logits.device)
    weights = torch.empty(n_tok, top_k + extra_slots, dtype=torch.float32, device=logits.device)
    if n_tok == 0:
        return ids, weights
    group_size = n_experts // n_group
    _group_limited_topk_kernel[(n_tok,)](
        partials, expert_bias.float(), ids, weights, partials.stride(0), partials.stride(1),
        float(routed_scaling_factor), E=n_experts, N_GROUP=n_group, NG_PAD=next_pow2(n_group), GROUP_SIZE=group_size,
        GS_PAD=next_pow2(group_size), TOPK_GROUP=topk_group, TOP_K=top_k, K_PAD=next_pow2(top_k),
        SPLITS=splits, EXTRA=extra_slots, X_PAD=next_pow2(extra_slots),
        num_warps=num_warps or topk_warps(n_tok), **pdl_kwargs(logits.device),
    )
    return ids, weights


def moe_route(x: torch.Tensor, weight: torch.Tensor, expert_bias: torch.Tensor, top_k: int, n_group: int,
              topk_group: int, routed_scaling_factor: float, extra_slots: int = 0
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole router: fp32 logits of ``x [T, H]`` against ``weight [E, H]``, then
    :func:`group_limited_topk`. The logits are split-K partials (``router_gemm``: no cast, 3xTF32
    on the tensor cores, the whole GPU on a tiny GEMM) summed by the top-k kernel."""
    partials = router_logit_partials(x, weight)  # [S, T, E]
    return group_limited_topk(partials, expert_bias, top_k, n_group, topk_group, routed_scaling_factor, extra_slots)
