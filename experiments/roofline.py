"""Byte and FLOP accounting of a loaded model, and the untimed eager replay's probes (benchmark.py).

Everything is counted from the model the engine loaded (its parameters and buffers as they
are, so an FP8 weight counts 1 byte per element plus its float32 scales), never from a shape
table: a written random checkpoint and an existing ``--checkpoint`` folder are measured alike.

- :func:`weight_bytes`: bytes a decode step reads of the weights: all parameters and scale
  buffers except the embedding table (only the step's rows are read) and the routed experts
  (counted per selected expert: ``U`` per MoE layer).
- :func:`flop_profile` / :func:`forward_flops`: the forward's useful FLOPs, 2 per multiply-add
  of every matmul weight per token (the LM head per logits row, routed experts per routed
  assignment) plus attention's ``QK^T`` and ``PV`` over the visible keys of every query.
- :class:`ReplayProbe`: hooks for an eager replay of a row's steps (CUDA graph replays run no
  Python hooks): distinct routed experts per MoE layer (``U``), the experts calls' GPU time
  and assignments, and each forward's token, logits-row and attention-pair counts.
"""

from __future__ import annotations

import time
from itertools import chain

import torch

# Dense bf16 tensor-core peak of one H200 used for "% of peak" and the compute floor: the
# figure of issue #18 ("the H200's bf16 peak (~790 TFLOP/s dense)"). NVIDIA's H200 SXM data
# sheet lists 989 TFLOP/s dense at boost clock; pass --peak-tflops to use another figure.
H200_BF16_DENSE_PEAK_TFLOPS = 790.0


def _own_tensors(mod) -> list[torch.Tensor]:
    return [t for t in chain(mod._parameters.values(), mod._buffers.values()) if t is not None]


def _is_scale(name: str) -> bool:
    """Buffers that are weight data (FP8 scales: ``weight_scale_inv``, ``w13_scale_inv``, ...);
    other buffers (RoPE caches) are not read as weights."""
    return "scale" in name.rsplit(".", 1)[-1]


def _experts(model) -> list:
    from diffulex.layers.moe.experts import StackedExperts

    return [m for m in model.modules() if isinstance(m, StackedExperts)]


def _routed_tensors(mod) -> list[torch.Tensor]:
    """A StackedExperts' per-expert tensors (weights and any scales, leading dim = local experts)."""
    return [t for t in _own_tensors(mod) if t.dim() >= 1 and t.shape[0] == mod.num_local]


def _embedding_ids(model) -> tuple[set[int], set[int]]:
    """(ids of embedding-table weights that are not also an LM head, ids of LM-head weights)."""
    from diffulex.layers.embedding import ParallelLMHead, VocabParallelEmbedding

    heads = {id(m.weight) for m in model.modules() if isinstance(m, ParallelLMHead)}
    tables = {id(m.weight) for m in model.modules()
              if isinstance(m, VocabParallelEmbedding) and not isinstance(m, ParallelLMHead)}
    return tables - heads, heads


def weight_bytes(model) -> tuple[int, int, int]:
    """(bytes read every step, bytes of one routed expert incl. its scales, number of MoE layers)."""
    routed, expert_bytes, moe_layers = set(), 0, 0
    for mod in _experts(model):
        tensors = _routed_tensors(mod)
        routed |= {id(t) for t in tensors}
        expert_bytes = sum(t[0].numel() * t.element_size() for t in tensors)
        moe_layers += 1
    tables, _ = _embedding_ids(model)
    always, seen = 0, set()
    named = chain(model.named_parameters(), ((n, b) for n, b in model.named_buffers() if _is_scale(n)))
    for _name, t in named:
        if id(t) in seen or id(t) in routed or id(t) in tables:
            continue  # the embedding table: only the step's rows are read
        seen.add(id(t))
        always += t.numel() * t.element_size()
    return always, expert_bytes, moe_layers


def kv_bytes_per_token(runner) -> int:
    return sum(2 * k.shape[2] * k.shape[3] * k.element_size() for k, _ in runner.kv_caches)


def flop_profile(model) -> dict:
    """FLOPs per unit: ``token`` (every 2-D weight but the embedding, the LM head and the routed
    experts: attention projections, dense MLPs, shared experts, routers), ``logits_row`` (the LM
    head), ``attention_pair`` (a query x visible key, all layers: QK^T and PV), ``assignment``
    (one token through one routed expert: gate/up and down)."""
    from diffulex.layers.attention import Attention

    routed = {id(t) for m in _experts(model) for t in _routed_tensors(m)}
    tables, heads = _embedding_ids(model)
    token = 0
    for name, p in model.named_parameters():
        if id(p) in routed or id(p) in tables or id(p) in heads:
            continue
        if p.dim() == 2 and name.rsplit(".", 1)[-1] == "weight":
            token += 2 * p.numel()
    head = sum(2 * p.numel() for p in model.parameters() if id(p) in heads)
    pair = sum(4 * m.num_heads * m.head_dim for m in model.modules() if isinstance(m, Attention))
    experts = _experts(model)
    assignment = 2 * (experts[0].w13[0].numel() + experts[0].w2[0].numel()) if experts else 0
    return dict(token=token, logits_row=head, attention_pair=pair, assignment=assignment)


def forward_flops(profile: dict, tokens: float, logits_rows: float, pairs: float, routed_assignments: float) -> float:
    return (profile["token"] * tokens + profile["logits_row"] * logits_rows + profile["attention_pair"] * pairs
            + profile["assignment"] * routed_assignments)


class ReplayProbe:
    """Hooks for an eager replay of a row's steps; records only while ``active``.

    Per forward (the engine's ``_forward`` wrapped): query tokens, logits rows, attention pairs
    (visible keys summed over the queries) and routed assignments (the experts calls' ids, minus
    the extra-slot columns of a folded shared expert). Per router call: distinct routed experts.
    Per experts call: GPU time (CUDA events around the call; wall time on CPU) and all of its
    assignments (a folded shared expert's slot included: it runs inside the same kernels).
    """

    def __init__(self, engine, cuda: bool) -> None:
        from forced_routing import router_modules

        self.engine, self.cuda = engine, cuda
        self.active = False
        self.handles, self.u_counts = [], []
        self.forwards: list[dict] = []
        self._calls: list = []  # (forward index, start, end, assignments)
        for mod in router_modules(engine.runner.model):
            self.handles.append(mod.register_forward_hook(self._router_hook))
        self.experts = _experts(engine.runner.model)
        for mod in self.experts:
            self.handles.append(mod.register_forward_pre_hook(self._experts_pre, with_kwargs=True))
            self.handles.append(mod.register_forward_hook(self._experts_post))
        self.orig = engine._forward
        engine._forward = self._forward
        self._pending = None

    def _router_hook(self, mod, inp, out):
        if not self.active:
            return
        ids = out[0][:, :mod.top_k]  # routed columns only (a shared expert's slot may follow)
        seen = torch.zeros(mod.num_experts, dtype=torch.int32, device=ids.device)
        seen.scatter_(0, ids.flatten().long(), 1)
        self.u_counts.append(seen.sum())

    def _experts_pre(self, mod, args, kwargs):
        if not self.active:
            return
        ids = args[1] if len(args) > 1 else kwargs["topk_ids"]
        extra = mod.extra_slots if kwargs.get("extra", args[3] if len(args) > 3 else False) else 0
        if self.forwards:
            self.forwards[-1]["routed"] += ids.shape[0] * (ids.shape[1] - extra)
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)
            start.record()
        else:
            start = time.perf_counter()
        self._pending = (start, ids.numel())

    def _experts_post(self, mod, inp, out):
        if not self.active or self._pending is None:
            return
        start, n = self._pending
        self._pending = None
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
        else:
            end = time.perf_counter()
        self._calls.append((len(self.forwards) - 1, start, end, n))

    def _forward(self, reqs, batch):
        if self.active:
            meta = batch.meta
            self.forwards.append(dict(tokens=int(meta.positions.shape[0]), logits=int(meta.logits_indices.shape[0]),
                                      pairs=(meta.key_hi - meta.key_lo).clamp_min(0).sum(), routed=0))
        return self.orig(reqs, batch)

    def close(self) -> None:
        self.engine._forward = self.orig
        for h in self.handles:
            h.remove()
        self.handles = []

    def summary(self, profile: dict, assignment_flops: int) -> dict:
        """Means per forward: U, tokens, model FLOPs, experts time / FLOPs (None without experts)."""
        if self.cuda:
            torch.cuda.synchronize()
        n = len(self.forwards)
        if not n:
            return dict(u=None, tokens=None, flops=None, experts_s=None, experts_flops=None)
        tokens = sum(f["tokens"] for f in self.forwards) / n
        logits = sum(f["logits"] for f in self.forwards) / n
        pairs = sum(int(f["pairs"]) for f in self.forwards) / n
        routed = sum(f["routed"] for f in self.forwards) / n
        flops = forward_flops(profile, tokens, logits, pairs, routed)
        out = dict(u=float(torch.stack(self.u_counts).float().mean()) if self.u_counts else None,
                   tokens=tokens, flops=flops, experts_s=None, experts_flops=None)
        if self._calls:
            secs = sum((a.elapsed_time(b) / 1e3) if self.cuda else (b - a) for _, a, b, _ in self._calls)
            out["experts_s"] = secs / n
            out["experts_flops"] = assignment_flops * sum(c[3] for c in self._calls) / n
        return out
