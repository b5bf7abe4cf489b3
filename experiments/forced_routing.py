"""Forced expert selection: record the routers' outputs of one forward, replay them in another.

Two kernel paths of an MoE model (Triton vs reference) round differently; on random weights
a tiny difference flips some top-k expert choices, and a flipped choice moves the token's
hidden state by a whole expert's output, so the two paths' logits drift apart however good
the kernels are. To compare the kernels themselves, :class:`ForcedRouting` records the
routed ``(ids, weights)`` of every router call of one forward (``record()``) and, in a later
forward on the same inputs (``force()``), replaces each router's output by the recorded one:
both paths then run the same experts with the same weights.

It works from outside the model with forward hooks on the router modules (no edit of the
layers): a router returns ``(topk_ids [T, k + X], topk_weights [T, k + X])`` where the last
``X`` columns are extra slots the caller asked for (LLaDA2's shared expert inside the fused
MoE, ids ``E ..`` with weight 1); only the first ``k`` (routed) columns are replaced, so a
path that folds the shared expert keeps its extra columns. Calls are matched in order per
router module (one call per forward in every model). CUDA graph replays run no hooks: use
eager forwards.
"""

from __future__ import annotations

import torch


def router_modules(model) -> list:
    """Every router module of ``model`` (LLaDA2 / DeepSeek-style and softmax top-k)."""
    from diffulex.layers.moe.router import GroupLimitedSigmoidRouter, SoftmaxTopKRouter

    return [m for m in model.modules() if isinstance(m, (GroupLimitedSigmoidRouter, SoftmaxTopKRouter))]


class ForcedRouting:
    """Forward hooks on every router of ``model``; modes ``off`` (default), ``record``, ``force``.

    ``record()``: the next router calls store their routed columns (cleared first).
    ``force()``: the next router calls return the recorded routed columns instead of their own
    (the extra-slot columns of the call are kept); ``flipped`` then holds, per call, the
    fraction of tokens whose own routed expert set differed from the recorded one.
    ``off()``: the hooks do nothing. ``close()`` removes them. Use as a context manager.
    """

    def __init__(self, model) -> None:
        self.routers = router_modules(model)
        self.mode = "off"
        self.recorded: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.calls: dict[int, int] = {}
        self.flipped: list[float] = []
        self.forced_calls = 0
        self.handles = [m.register_forward_hook(self._hook) for m in self.routers]

    def __enter__(self) -> "ForcedRouting":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def record(self) -> None:
        self.mode, self.recorded, self.calls = "record", {}, {}

    def force(self) -> None:
        if not self.recorded and self.routers:
            raise RuntimeError("ForcedRouting.force(): nothing recorded (call record() and run a forward first)")
        self.mode, self.calls, self.flipped, self.forced_calls = "force", {}, [], 0

    def off(self) -> None:
        self.mode = "off"

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def _hook(self, mod, inp, out):
        if self.mode == "off":
            return None
        ids, weights = out
        k = mod.top_k
        key = id(mod)
        if self.mode == "record":
            self.recorded.setdefault(key, []).append((ids[:, :k].detach().clone(), weights[:, :k].detach().clone()))
            return None
        i = self.calls.get(key, 0)
        self.calls[key] = i + 1
        calls = self.recorded.get(key, [])
        if i >= len(calls):
            raise RuntimeError(f"ForcedRouting: router call {i + 1} of a module, only {len(calls)} recorded")
        rec_ids, rec_w = calls[i]
        if rec_ids.shape[0] != ids.shape[0]:
            raise RuntimeError(f"ForcedRouting: recorded {rec_ids.shape[0]} tokens, this call routes {ids.shape[0]}"
                               " (force() needs the recorded forward's inputs)")
        own = ids[:, :k].sort(-1).values
        self.flipped.append(float((own != rec_ids.sort(-1).values.to(own.dtype)).any(-1).float().mean()))
        self.forced_calls += 1
        forced_ids = torch.cat([rec_ids.to(ids.dtype), ids[:, k:]], dim=1).contiguous()
        forced_w = torch.cat([rec_w.to(weights.dtype), weights[:, k:]], dim=1).contiguous()
        return forced_ids, forced_w
