"""CUDA-graph replay plumbing of the model runner, checked on CPU with a fake capture.

The engine runs a tiny model on the Triton ops (interpreter) with ``DecodeGraphs`` in front,
capture and replay faked by ``fake_cuda_graphs`` (a replay reruns the captured forward on the
static buffers): greedy tokens must equal the plain eager engine's, and most steps must be
replays. This pins what only a GPU run checked before: that every input of a step reaches the
static buffers (page tables padded with -1, metadata, positions), that per-forward derived
values (the attention grid map) are recomputed inside each replay, and that the logits rows are
gathered from the replayed output.
"""

from __future__ import annotations

import pytest
import torch

import fake_cuda_graphs
from triton_interp import interpreted, triton_interpreter  # noqa: F401  (autouse fixture)

with interpreted():
    pytest.importorskip("triton")
    import diffulex.kernels.triton  # noqa: F401  (decorate the kernels while interpreting)
    from diffulex import Diffulex, SamplingParams
    from diffulex.layers.graphs import DecodeGraphs

PROMPTS = [[(5 * i + 3 * j) % 200 + 20 for i in range(n)] for j, n in enumerate((5, 11))]
KW = dict(dtype="float32", block_size=8, page_size=4, decoding_strategy="multi_bd", enable_prefix_caching=False)


def _tokens(llm) -> list[list[int]]:
    return [t.token_ids for t in llm.generate(PROMPTS, SamplingParams(max_tokens=16))]


@pytest.mark.parametrize("family", ["llada", "llada2"])
def test_graph_replays_give_the_eager_tokens(tiny_path, monkeypatch, family):
    with Diffulex(tiny_path(family), **KW) as llm:
        eager = _tokens(llm)
    fake_cuda_graphs.install(monkeypatch)
    with Diffulex(tiny_path(family), **KW) as llm:
        runner = llm.runner
        for module in runner.model.modules():
            if getattr(module, "uses_kernels", False):
                module.kernels = "triton"
        runner.kernels = "triton"
        runner.graphs = DecodeGraphs(
            fake_cuda_graphs.recording(lambda ids, pos, meta: runner.model(ids, pos, meta, runner.kv_caches)),
            runner.device, max_tokens=64, max_pages=16)
        graphed = _tokens(llm)
        captures, replays = runner.graphs.captures, runner.graphs.replays
    assert graphed == eager
    assert captures >= 1 and replays > captures  # the tokens came mostly from replays
