"""CUDA-graph replay plumbing of the model runner, checked on CPU with a fake capture.

The engine runs a tiny model (on the Triton ops under the interpreter, or on the reference ops
where that is too slow) with ``DecodeGraphs`` in front,
capture and replay faked by ``fake_cuda_graphs`` (a replay reruns the captured forward on the
static buffers): greedy tokens must equal the plain eager engine's, and most steps must be
replays. This pins what only a GPU run checked before: that every input of a step reaches the
static buffers (page tables padded with -1, metadata, positions, strategy inputs: dmax's soft
inputs in their dense form, DiffusionGemma's canvas mask and self-conditioning rows, fast_dllm_v2's
cache-only context lengths), that per-forward derived
values (the attention grid map) are recomputed inside each replay, and that the logits rows are
gathered from the replayed output.
"""

from __future__ import annotations

import pytest

import fake_cuda_graphs
from triton_interp import interpreted, triton_interpreter  # noqa: F401  (autouse fixture)

with interpreted():
    pytest.importorskip("triton")
    import diffulex.kernels.triton  # noqa: F401  (decorate the kernels while interpreting)
    from diffulex import Diffulex, SamplingParams
    from diffulex.layers.graphs import SEGMENT_LAYERS, DecodeGraphs, segment_starts

PROMPTS = [[(5 * i + 3 * j) % 200 + 20 for i in range(n)] for j, n in enumerate((5, 11))]
KW = dict(dtype="float32", block_size=8, page_size=4, decoding_strategy="multi_bd", enable_prefix_caching=False)


def _tokens(llm) -> list[list[int]]:
    return [t.token_ids for t in llm.generate(PROMPTS, SamplingParams(max_tokens=16))]


@pytest.mark.parametrize("family, strategy, ops", [
    ("llada", {}, "triton"),
    ("llada2", dict(decoding_strategy="dmax", sampling_mode="edit"), "triton"),  # MoE; soft inputs, dense
    ("fast_dllm_v2", dict(decoding_strategy="fast_dllm_v2", use_dual_cache=True), "triton"),  # cache-only steps
    # Canvas mask and self-conditioning rows; reference ops (the interpreter needs minutes for this model).
    ("diffusion_gemma", dict(decoding_strategy="diffusion_gemma", block_size=None, page_size=16), "torch"),
])
def test_graph_replays_give_the_eager_tokens(tiny_path, monkeypatch, family, strategy, ops):
    kw = {**KW, **strategy}
    with Diffulex(tiny_path(family), **kw) as llm:
        eager = _tokens(llm)
    fake_cuda_graphs.install(monkeypatch)
    with Diffulex(tiny_path(family), **kw) as llm:
        runner = llm.runner
        for module in runner.model.modules():
            if getattr(module, "uses_kernels", False):
                module.kernels = ops
        runner.kernels = "triton"  # the runner's switch for graphs (the fake capture tolerates host syncs)
        layers = runner.model.model.layers
        starts = segment_starts(layers)
        assert len(starts) == len(range(1, len(layers), SEGMENT_LAYERS)) >= 1
        graphs = DecodeGraphs(fake_cuda_graphs.recording(runner.graph_forward), runner.device,
                              max_tokens=1024, max_pages=64, segment_starts=starts)
        runner.graphs = graphs
        graphed = _tokens(llm)
        captures, replays = graphs.captures, graphs.replays
        extra_keys = {name for key in graphs.entries for name, _ in key[-1]}  # strategy inputs graphed
        segments = {len(entry["graphs"]) for entry in graphs.entries.values()}
        # every segment of a shape replays as often as the others (in order: DecodeGraphs.run)
        assert all(len({g.replays for g in entry["graphs"]}) == 1 for entry in graphs.entries.values())
    assert graphed == eager
    assert captures >= 1 and replays > captures  # the tokens came mostly from replays
    assert segments == {len(starts) + 1}  # the body was captured as one graph per segment
    expected = {"dmax": {"soft_mask", "soft_ids", "soft_probs", "soft_params"},
                "diffusion_gemma": {"canvas_mask", "self_conditioning_embeds"}}.get(strategy.get("decoding_strategy"), set())
    assert extra_keys == expected
