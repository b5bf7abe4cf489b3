"""A stand-in for CUDA graph capture on CPU, to test the static-buffer plumbing of DecodeGraphs.

A real capture records kernels that read and write fixed addresses; a replay reruns them on
whatever the static buffers then hold. The fake keeps that contract: a forward that returns while
``g`` captures (between ``g.capture_begin()`` and ``g.capture_end()``) is recorded with its (static)
arguments and output tensor, and ``g.replay()`` reruns it on the same argument objects and copies the result into that same
output tensor. So a replay sees exactly what the owner copied into the static buffers, and
anything computed outside the capture (e.g. metadata derived once and cached) goes stale the
way it would on a GPU.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch


class FakeGraph:
    current: "FakeGraph | None" = None

    def __init__(self) -> None:
        self.calls: list[tuple[Callable, tuple, torch.Tensor]] = []
        self.replays = 0

    def replay(self) -> None:
        self.replays += 1
        for fn, args, out in self.calls:
            out.copy_(fn(*args))

    # The manual capture API (segmented capture): a call is recorded by the graph capturing
    # when the recorded forward returns (the last segment); earlier segments replay nothing.
    def capture_begin(self, pool: Any = None) -> None:
        FakeGraph.current = self

    def capture_end(self) -> None:
        FakeGraph.current = None


def recording(forward: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Wrap the captured forward: inside a fake capture, remember the call for the replays."""

    def wrapped(*args: Any) -> torch.Tensor:
        out = forward(*args)
        if FakeGraph.current is not None:
            FakeGraph.current.calls.append((forward, args, out))
        return out

    return wrapped


class _Stream:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def wait_stream(self, other: Any) -> None:
        pass


def install(monkeypatch) -> None:
    """Replace the torch.cuda graph / stream API that DecodeGraphs uses with the fakes."""
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: None)
    monkeypatch.setattr(torch.cuda, "Stream", _Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a, **k: _Stream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
