"""The fused Triton path of whole models equals the reference path (CPU interpreter, fp32).

A model built from a tiny checkpoint runs a paged prefill and then a cached block step
once with every layer on the reference ops and once on the Triton ops (fused residual +
RMSNorm, in-place q/k norm + RoPE, SiLU-and-mul, KV store, paged attention with the grid
map shared by all layers of a forward, router top-k and fused MoE). Families: llada2 (MoE,
q/k norm, partial RoPE), llada (dense, full RoPE), sdar (Qwen3-style q/k norm).
"""

from __future__ import annotations

import pytest
import torch

from triton_interp import interpreted, triton_interpreter  # noqa: F401  (autouse fixture)

with interpreted():
    pytest.importorskip("triton")
    import diffulex.kernels.triton  # noqa: F401  (decorate the kernels while interpreting)
    import diffulex.models  # noqa: F401  (registers the families)
    from diffulex.config.checkpoint import load_hf_config
    from diffulex.layers.attention_metadata import AttentionMetadata
    from diffulex.registry import AutoModel

PAGE, BLOCK = 4, 4


def meta_for(positions: list[int], ctx: int, pages: torch.Tensor) -> AttentionMetadata:
    """One block-causal sequence writing its tokens into ``pages``."""
    pos = torch.tensor(positions)
    return AttentionMetadata(
        cu_seqlens_q=torch.tensor([0, len(positions)]), positions=pos, context_lens=torch.tensor([ctx]),
        page_table=pages[None], slot_mapping=pages[pos // PAGE] * PAGE + pos % PAGE,
        key_lo=torch.zeros_like(pos), key_hi=(pos // BLOCK + 1) * BLOCK, cache_only=torch.tensor([False]),
        logits_indices=torch.arange(len(positions)), page_size=PAGE)


def set_kernels(model: torch.nn.Module, name: str) -> None:
    for module in model.modules():
        if getattr(module, "uses_kernels", False):
            module.kernels = name


@pytest.mark.parametrize("family", ["llada2", "llada", "sdar"])
def test_triton_model_path_equals_reference(family, tiny_path):
    path = tiny_path(family)
    model = AutoModel.get(family)(load_hf_config(path), dtype=torch.float32)
    model.load_weights(path)
    model.eval()
    ids = torch.randint(0, 64, (12,), generator=torch.Generator().manual_seed(1))
    pages = torch.tensor([3, 0, 2])
    results = {}
    for kernels in ("torch", "triton"):
        set_kernels(model, kernels)
        caches = [(torch.zeros(4, PAGE, h, d), torch.zeros(4, PAGE, h, d)) for h, d in model.kv_cache_spec()]
        with torch.inference_mode():
            prefill = model(ids[:8], torch.arange(8), meta_for(list(range(8)), 0, pages), caches)
            step = model(ids[8:], torch.arange(8, 12), meta_for(list(range(8, 12)), 8, pages), caches)
            results[kernels] = (model.compute_logits(prefill), model.compute_logits(step), caches)
    (p_ref, s_ref, c_ref), (p_tri, s_tri, c_tri) = results["torch"], results["triton"]
    torch.testing.assert_close(p_tri, p_ref, atol=2e-4, rtol=2e-4)
    torch.testing.assert_close(s_tri, s_ref, atol=2e-4, rtol=2e-4)
    for (k_ref, v_ref), (k_tri, v_tri) in zip(c_ref, c_tri):  # the KV written by both paths
        torch.testing.assert_close(k_tri, k_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(v_tri, v_ref, atol=1e-5, rtol=1e-5)


def test_llada2_shared_expert_runs_inside_the_fused_moe(tiny_path, monkeypatch):
    """On one shard the shared expert's weights are a slot of the stacked experts (loaded through
    its own layers), so at small batches the fused MoE runs it with the routed experts: same
    logits as the separate shared MLP; the fold is really taken, and it is skipped for larger
    batches and when a wrapper (e.g. an unmerged LoRA layer) replaces the shared expert's layers."""
    import diffulex.models.llada2 as llada2

    path = tiny_path("llada2")
    model = AutoModel.get("llada2")(load_hf_config(path), dtype=torch.float32)
    model.load_weights(path)
    model.eval()
    set_kernels(model, "triton")
    moes = [layer.mlp for layer in model.model.layers if layer.is_moe]
    for moe in moes:  # the loaded shared weights are the extra slot
        w13, w2 = moe.experts.slot(0)
        assert torch.equal(w13, moe.shared_experts.gate_up_proj.weight) and w13.abs().sum() > 0
        assert torch.equal(w2, moe.shared_experts.down_proj.weight) and w2.abs().sum() > 0
    folded = []
    forward = type(moes[0].experts).forward
    monkeypatch.setattr(type(moes[0].experts), "forward",
                        lambda self, *a, extra=False: folded.append(extra) or forward(self, *a, extra=extra))
    ids = torch.randint(0, 64, (8,), generator=torch.Generator().manual_seed(2))

    def logits():
        caches = [(torch.zeros(4, PAGE, h, d), torch.zeros(4, PAGE, h, d)) for h, d in model.kv_cache_spec()]
        with torch.inference_mode():
            return model.compute_logits(model(ids, torch.arange(8), meta_for(list(range(8)), 0, torch.tensor([3, 0])),
                                              caches))

    fused = logits()
    assert folded and all(folded)
    folded.clear()
    monkeypatch.setattr(llada2, "FOLD_MAX_TOKENS", 4)  # 8 tokens: the shared MLP runs on its own
    separate = logits()
    assert folded and not any(folded)
    torch.testing.assert_close(fused, separate, atol=2e-4, rtol=2e-4)
    monkeypatch.setattr(llada2, "FOLD_MAX_TOKENS", 32)
    folded.clear()
    for moe in moes:  # a wrapper around the shared layers (what unmerged LoRA does): no fold
        moe.shared_experts.down_proj = torch.nn.Sequential(moe.shared_experts.down_proj)
    torch.testing.assert_close(logits(), separate, atol=2e-4, rtol=2e-4)
    assert folded and not any(folded)
