"""Carrying the configured kernel backend (``runtime.kernels``) from the runner to the layers.

Layers that call kernels hold a ``kernels`` attribute (default ``"torch"``: the reference
ops). The model runner sets it on every such module once the model is built, from its own
config, so two engines in one process never share the choice (no module globals).
"""

from __future__ import annotations

import torch
from torch import nn

from diffulex.config.enums import KernelBackend


def resolve_backend(backend: KernelBackend | str, device: torch.device | str) -> str:
    """``auto`` → ``triton`` on CUDA, ``torch`` elsewhere; ``triton`` off CUDA is an error."""
    backend = KernelBackend(backend)
    on_cuda = torch.device(device).type == "cuda"
    if backend == KernelBackend.AUTO:
        return KernelBackend.TRITON.value if on_cuda else KernelBackend.TORCH.value
    if backend == KernelBackend.TRITON and not on_cuda:
        raise ValueError(f"kernels='triton' needs a CUDA device, got {device}; use 'auto' or 'torch'")
    return backend.value


def set_kernel_backend(model: nn.Module, backend: KernelBackend | str, device: torch.device | str) -> str:
    """Set ``kernels`` on every module of ``model`` that declares ``uses_kernels``; returns the resolved name."""
    name = resolve_backend(backend, device)
    for module in model.modules():
        if getattr(module, "uses_kernels", False):
            module.kernels = name
    return name


__all__ = ["resolve_backend", "set_kernel_backend"]
