"""Kernel selection: the one place that decides which implementation of each op runs.

Layers never import a kernel directly; they call :func:`get_ops` with the device of their
tensors and the configured backend (``runtime.kernels``). The plain-PyTorch reference ops
run everywhere; the Triton ops (``kernels/triton``, imported only when chosen) run on CUDA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import torch

from diffulex.config.enums import KernelBackend
from diffulex.kernels import reference as _ref


@dataclass(frozen=True)
class KernelOps:
    """The ops a forward pass needs, as one bundle chosen per device.

    Signatures (shapes in each op's docstring) are identical between bundles:
    ``store_kvcache(k, v, k_cache, v_cache, slot_mapping)``,
    ``paged_attention(q, k_new, v_new, k_cache, v_cache, meta, scale, softcap=None)``,
    ``group_limited_topk(logits, expert_bias, top_k, n_group, topk_group, routed_scaling_factor, extra_slots=0)``,
    ``moe_route(x, weight, expert_bias, top_k, n_group, topk_group, routed_scaling_factor, extra_slots=0)``,
    ``fused_moe(x, topk_ids, topk_weights, w13, w2, expert_start=0, num_experts=None)``,
    ``greedy_confidence(logits, forbidden)``, ``rms_norm(x, weight, eps, residual=None)``,
    ``qk_norm_rope(q, k, positions, cos_cache, sin_cache, q_weight=None, k_weight=None, eps=1e-6, cache=None)``,
    ``silu_and_mul(x)``, ``fp8_linear(x, q, scale, block, bias=None)`` (FP8 e4m3 weight ``q [N, K]``
    with float32 ``scale`` per ``block`` tile; ``x @ dequant(q)^T (+ bias)`` in ``x.dtype``).
    """

    name: str
    store_kvcache: Callable[..., None]
    paged_attention: Callable[..., torch.Tensor]
    group_limited_topk: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    moe_route: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    fused_moe: Callable[..., torch.Tensor]
    greedy_confidence: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    rms_norm: Callable[..., Any]
    qk_norm_rope: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    silu_and_mul: Callable[..., torch.Tensor]
    fp8_linear: Callable[..., torch.Tensor]


REFERENCE_OPS = KernelOps(
    name="reference",
    store_kvcache=_ref.store_kvcache,
    paged_attention=_ref.paged_attention,
    group_limited_topk=_ref.group_limited_topk,
    moe_route=_ref.moe_route,
    fused_moe=_ref.fused_moe,
    greedy_confidence=_ref.greedy_confidence,
    rms_norm=_ref.rms_norm,
    qk_norm_rope=_ref.qk_norm_rope,
    silu_and_mul=_ref.silu_and_mul,
    fp8_linear=_ref.fp8_linear,
)


@lru_cache(maxsize=1)
def triton_ops() -> KernelOps:
    """The Triton bundle (imports Triton on first call)."""
    from diffulex.kernels import triton as _tri

    return KernelOps(
        name="triton",
        store_kvcache=_tri.store_kvcache,
        paged_attention=_tri.paged_attention,
        group_limited_topk=_tri.group_limited_topk,
        moe_route=_tri.moe_route,
        fused_moe=_tri.fused_moe,
        greedy_confidence=_tri.greedy_confidence,
        rms_norm=_tri.rms_norm,
        qk_norm_rope=_tri.qk_norm_rope,
        silu_and_mul=_tri.silu_and_mul,
        fp8_linear=_tri.fp8_linear,
    )


def get_ops(device: torch.device | str, backend: KernelBackend | str | KernelOps = KernelBackend.TORCH) -> KernelOps:
    """Return the ops for tensors on ``device`` under ``backend`` ("torch", "triton" or "auto").

    A ``KernelOps`` bundle given as ``backend`` is returned as it is (the training code's
    differentiable attention, ``diffulex.train.attention``).

    ``auto`` and ``triton`` give the Triton ops on CUDA; ``auto`` gives the reference ops
    elsewhere, and ``triton`` off CUDA is an error. The default, ``torch``, keeps the
    reference ops until the engine passes its configured backend. Under ``TRITON_INTERPRET=1``
    ``triton`` also gives the Triton ops on CPU (slow; how the tests run them).
    """
    if isinstance(backend, KernelOps):
        return backend
    device = torch.device(device)  # rejects malformed device strings
    try:
        backend = KernelBackend(backend)
    except ValueError:
        raise ValueError(f"get_ops: backend {backend!r}, expected one of "
                         f"{[b.value for b in KernelBackend]}") from None
    if backend == KernelBackend.TORCH:
        return REFERENCE_OPS
    if device.type == "cuda":
        return triton_ops()
    if backend == KernelBackend.TRITON and os.environ.get("TRITON_INTERPRET") == "1":
        return triton_ops()  # the Triton interpreter runs the kernels on CPU tensors (tests)
    if backend == KernelBackend.TRITON:
        raise ValueError(f"get_ops: backend 'triton' needs a CUDA device, got {device}; use 'auto' or 'torch'")
    return REFERENCE_OPS


__all__ = ["KernelOps", "REFERENCE_OPS", "get_ops", "triton_ops"]
