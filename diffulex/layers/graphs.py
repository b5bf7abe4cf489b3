"""CUDA graphs of the model body for steps of a fixed shape (decode steps).

One graph per step shape ``(tokens N, sequences S, scalar metadata)``, as given: the owner
pads steps to a few bucket shapes first (:class:`~diffulex.layers.graph_buckets.GraphBuckets`:
``S`` to an entry of ``runtime.cuda_graph_batch_sizes``, ``N`` to a ladder of block-size
multiples), so ``max_graphs`` covers every bucket a decode step can take. The step's inputs
arrive as HOST tensors: token ids, positions, each ``AttentionMetadata`` tensor and the logits
rows are written into the shape's :class:`~diffulex.layers.graph_inputs.StaticInputs` (one
device buffer of typed views, filled by one host-to-device copy; no copy launch per field). The
page table is padded (``-1`` beyond a sequence's pages) to one of two widths: ``short_pages``
when every sequence of the step fits them, else the longest admissible context. So two graphs
per shape serve every context length, and kernels that choose their launch from the page
table's width (the attention's split over the key axis, see
``kernels/triton/paged_attention.py``) get the lean launch for short contexts.
Strategy inputs of a fixed shape per step shape (dmax's soft inputs in their dense form,
DiffusionGemma's canvas mask and self-conditioning rows; device tensors) get static buffers
too, filled by a device copy each. Only the model body is captured; the logits rows
(``logits_indices``, which vary with the masks left) come back as a device view of the static
inputs, to be gathered and projected eagerly afterwards.

Each shape's body is captured as a few graphs in sequence, split where given modules (every
``SEGMENT_LAYERS``-th decoder layer, see the model runner) start. The host's launch of a graph
grows with its kernel nodes while the GPU, idle between steps, waits for it; split, only the
first, small segment's launch is exposed, and the host launches the next ones while the GPU
runs the earlier ones. (On an H100 this saved <= 0.06 ms per step at batch 1; the profiler,
which traces every node, shows ~0.3 ms per launch of a 300-kernel graph.) The segments share
one memory pool and replay in capture order.

A shape is captured the first time it is seen (one eager warm-up forward, which writes the
same KV entries the replay writes again), up to ``max_graphs`` shapes; larger steps, other
shapes once the budget is spent and any shape whose capture fails run eagerly. Capture
needs a forward with no host synchronization: the Triton path. The owner must drop the
graphs (:meth:`clear`) if the model's kernels change.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import torch

from .graph_inputs import StaticInputs

logger = logging.getLogger(__name__)

_FAILED = object()
SEGMENT_LAYERS = 4  # decoder layers per captured graph after the first (0: one graph per shape)


def segment_starts(layers: Sequence[torch.nn.Module]) -> list[torch.nn.Module]:
    """Where the body's graphs split: layer 1 (a small first graph: embedding + layer 0), then every
    ``SEGMENT_LAYERS`` layers."""
    return [layers[i] for i in range(1, len(layers), SEGMENT_LAYERS)] if SEGMENT_LAYERS > 0 else []


class DecodeGraphs:
    """Captures and replays ``forward(input_ids, positions, meta, extras) -> hidden [N, H]`` per step shape."""

    def __init__(self, forward: Callable[..., torch.Tensor], device: torch.device, max_tokens: int,
                 max_pages: int, max_graphs: int = 64, short_pages: int | None = None,
                 segment_starts: Sequence[torch.nn.Module] = ()) -> None:
        """``segment_starts``: modules at whose calls during a capture a new graph begins (at most
        ``len(segment_starts)`` switches per capture, at the first such calls)."""
        self.forward = forward
        self.segment_starts = list(segment_starts)
        self.device = device
        self.max_tokens = max_tokens
        self.max_pages = max_pages
        self.short_pages = short_pages if short_pages and short_pages < max_pages else None
        self.max_graphs = max_graphs
        self.entries: dict[Any, Any] = {}
        self.pool = None
        self.captures = 0
        self.replays = 0

    def clear(self) -> None:
        self.entries.clear()
        self.pool = None

    def _pages(self, meta: Any) -> int:
        """The page-table width of the step's graph: ``short_pages`` if it fits, else ``max_pages``."""
        if self.short_pages is not None and meta.page_table.shape[1] <= self.short_pages:
            return self.short_pages
        return self.max_pages

    def _key(self, input_ids: torch.Tensor, meta: Any, extras: dict) -> Any:
        scalars = tuple(sorted((k, v) for k, v in vars(meta).items() if not torch.is_tensor(v)))
        shapes = tuple(sorted((k, tuple(v.shape), v.dtype) for k, v in vars(meta).items()
                              if torch.is_tensor(v) and k not in ("page_table", "logits_indices")))
        extra = tuple(sorted((k, (tuple(v.shape), v.dtype) if torch.is_tensor(v) else v) for k, v in extras.items()))
        return (tuple(input_ids.shape), shapes, scalars, self._pages(meta), extra)

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: Any,
            extras: dict | None = None, patch: Callable | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(hidden [N, H], rows [M])`` of the step, or None when this step runs eagerly.

        ``input_ids``, ``positions`` and ``meta``'s tensors are host tensors (the step as padded by
        the owner); ``hidden`` is a static buffer (use it before the next call) and ``rows`` the
        device copy of ``meta.logits_indices`` (a view of the static inputs). ``extras``: strategy
        inputs of fixed shape per step shape (device tensors get static buffers; other values are
        part of the graph's key). ``patch``: rewrites the static token ids on the device after they
        are copied in (``[N_b] -> [N_b]``)."""
        extras = extras or {}
        n = input_ids.shape[0]
        if (n == 0 or n > self.max_tokens or meta.page_table.shape[1] > self.max_pages
                or meta.logits_indices.shape[0] > n):
            return None
        try:
            key = self._key(input_ids, meta, extras)
            hash(key)
        except TypeError:
            return None
        entry = self.entries.get(key)
        if entry is _FAILED:
            return None
        if entry is None:
            if len(self.entries) >= self.max_graphs:
                return None
            return self._capture(key, input_ids, positions, meta, extras, patch)
        self._fill(entry, input_ids, positions, meta, extras, patch)
        for graph in entry["graphs"]:
            graph.replay()
        self.replays += 1
        return entry["out"], self._rows(entry, meta)

    @staticmethod
    def _rows(entry: dict, meta: Any) -> torch.Tensor:
        return entry["inputs"].views["logits_indices"][:meta.logits_indices.shape[0]]

    def _fill(self, entry: dict, input_ids: torch.Tensor, positions: torch.Tensor, meta: Any,
              extras: dict, patch: Callable | None = None) -> None:
        values = {name: getattr(meta, name) for name in entry["tensors"]}
        values.update(ids=input_ids, pos=positions)
        entry["inputs"].write(values)  # one host -> device copy
        if patch is not None:
            ids = entry["inputs"].views["ids"]
            ids.copy_(patch(ids))
        for name, buf in entry["extras"].items():
            buf.copy_(extras[name], non_blocking=True)

    def _capture(self, key: Any, input_ids: torch.Tensor, positions: torch.Tensor, meta: Any,
                 extras: dict, patch: Callable | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
        dev = self.device
        n = input_ids.shape[0]
        layout = [("ids", input_ids.dtype, (n,)), ("pos", positions.dtype, (n,))]
        tensors = []  # meta's tensor fields, in the static inputs
        for name, value in vars(meta).items():
            if not torch.is_tensor(value):
                continue
            shape = tuple(value.shape)
            if name == "page_table":
                shape = (shape[0], self._pages(meta))
            elif name == "logits_indices":  # M <= N rows; not read by the model body
                shape = (n,)
            layout.append((name, value.dtype, shape))
            tensors.append(name)
        try:
            inputs = StaticInputs(layout, dev, fill={"page_table": -1})
        except ValueError as exc:  # a dtype numpy lacks: run this shape eagerly
            logger.warning("step shape %s cannot be graphed, running it eagerly: %s", key, exc)
            self.entries[key] = _FAILED
            return None
        fields = {name: (inputs.views[name] if torch.is_tensor(value) else value) for name, value in vars(meta).items()}
        fields["logits_indices"] = inputs.views["logits_indices"][:0]
        entry = {"inputs": inputs, "tensors": tensors,
                 "extras": {k: torch.empty(v.shape, dtype=v.dtype, device=dev)
                            for k, v in extras.items() if torch.is_tensor(v)}}
        ids, pos = inputs.views["ids"], inputs.views["pos"]
        static_meta = type(meta)(**fields)
        static_extras = {k: entry["extras"].get(k, v) for k, v in extras.items()}
        self._fill(entry, input_ids, positions, meta, extras, patch)
        try:
            side = torch.cuda.Stream(dev)
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side):
                warm = self.forward(ids, pos, static_meta, static_extras)  # compiles; a valid result
            torch.cuda.current_stream(dev).wait_stream(side)
            warm = warm.clone()
            if self.pool is None:
                self.pool = torch.cuda.graph_pool_handle()
            graphs = self._capture_segments(lambda: self.forward(ids, pos, static_meta, static_extras), entry)
        except Exception as exc:  # e.g. a host sync inside the forward: run this shape eagerly
            logger.warning("CUDA graph capture failed for step shape %s, running it eagerly: %s", key, exc)
            self.entries[key] = _FAILED
            torch.cuda.synchronize(dev)
            return None
        entry["graphs"] = graphs
        entry["meta"] = static_meta
        self.entries[key] = entry
        self.captures += 1
        return warm, self._rows(entry, meta)

    def _capture_segments(self, body: Callable[[], torch.Tensor], entry: dict) -> list:
        """Capture ``body()`` into ``len(segment_starts) + 1`` graphs (fewer if some start modules are
        not called), switching graphs when a start module is entered; its output -> ``entry["out"]``."""
        graphs = [torch.cuda.CUDAGraph()]
        planned = len(self.segment_starts)

        def switch(module, args):
            if len(graphs) <= planned:
                graphs[-1].capture_end()
                graphs.append(torch.cuda.CUDAGraph())
                graphs[-1].capture_begin(pool=self.pool)

        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        handles = [m.register_forward_pre_hook(switch) for m in self.segment_starts]
        try:
            with torch.cuda.stream(side):
                graphs[0].capture_begin(pool=self.pool)
                try:
                    entry["out"] = body()
                finally:
                    graphs[-1].capture_end()
        finally:
            for h in handles:
                h.remove()
        torch.cuda.current_stream(self.device).wait_stream(side)
        return graphs


__all__ = ["DecodeGraphs"]
