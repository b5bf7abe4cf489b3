"""Reading FP8 checkpoints: ``X.weight`` (float8_e4m3fn) + its scale become one full-precision tensor.

Two scale forms are read, both multiplying (``W ~ weight * scale``):

* ``X.weight_scale_inv`` float32 ``[ceil(N / bn), ceil(K / bk)]`` (block-wise FP8, the tiles of
  config.json's ``quantization_config.weight_block_size``; DeepSeek-V3, Qwen3-FP8, ...);
* ``X.weight_scale`` with one element (per tensor) or ``[N]`` / ``[N, 1]`` (per output channel),
  the older FP8 exports.

A static-activation checkpoint's ``X.input_scale`` tensors are skipped (activations stay in
``model.dtype``). Everything else passes unchanged, so every family's name mapping sees the
tensor names of a full-precision checkpoint.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Optional

import torch

from diffulex.quantization.fp8 import FP8_DTYPE, dequantize_fp8

SCALE_INV = ".weight_scale_inv"
SCALE = ".weight_scale"
INPUT_SCALE = ".input_scale"


def scale_partner(name: str) -> Optional[str]:
    """``X.weight`` for a scale tensor's name (``X.weight_scale_inv`` / ``X.weight_scale``), else None."""
    for suffix in (SCALE_INV, SCALE):
        if name.endswith(suffix):
            return name[: -len(suffix)] + ".weight"
    return None


def fp8_weight_names(names: Iterable[str]) -> set[str]:
    """The ``X.weight`` names a checkpoint stores in FP8 (those with a scale tensor), from its tensor names."""
    return {p for p in map(scale_partner, names) if p is not None}


def dequantize_checkpoint_tensor(name: str, q: torch.Tensor, scale: torch.Tensor, kind: str,
                                 block: Optional[tuple[int, int]]) -> torch.Tensor:
    """The float32 weight an FP8 ``q`` and its scale stand for (ValueError naming ``name`` on a mismatch)."""
    if q.dtype != FP8_DTYPE:
        raise ValueError(f"checkpoint tensor {name!r} has a scale but dtype {q.dtype}, not float8_e4m3fn; "
                         "only e4m3 FP8 weights load")
    scale = scale.float()
    n = q.shape[-2] if q.dim() >= 2 else q.numel()
    if scale.numel() == 1:  # one scale for the tensor (either name)
        return q.float() * scale.reshape(())
    if kind == SCALE and q.dim() == 2 and tuple(scale.shape) in ((n,), (n, 1)):  # per output channel
        return q.float() * scale.reshape(n, 1)
    if kind == SCALE_INV and block is not None:
        try:
            return dequantize_fp8(q, scale, block)
        except ValueError as err:
            raise ValueError(f"checkpoint tensor {name!r}: {err}; the checkpoint's weight_block_size "
                             f"{list(block)} does not fit its scales") from None
    raise ValueError(f"checkpoint tensor {name!r}: FP8 scale of shape {tuple(scale.shape)} for a weight of shape "
                     f"{tuple(q.shape)} is not a supported layout (config.json weight_block_size "
                     f"{list(block) if block else None}); expected one scale per tensor, per output channel or "
                     "per weight_block_size tile")


def dequantized(tensors: Iterable[tuple[str, torch.Tensor]],
                block: Optional[tuple[int, int]]) -> Iterator[tuple[str, torch.Tensor]]:
    """The checkpoint stream with every FP8 weight and its scale merged into one float32 ``X.weight``.

    The two halves may come in any order (and from different shards); the merged tensor is
    yielded when the second arrives. ValueError for an FP8 weight without a scale or a scale
    without its weight, at the end of the stream.
    """
    weights: dict[str, torch.Tensor] = {}
    scales: dict[str, tuple[torch.Tensor, str]] = {}
    for name, tensor in tensors:
        if name.endswith(INPUT_SCALE):
            continue
        partner = scale_partner(name)
        if partner is not None:
            kind = SCALE_INV if name.endswith(SCALE_INV) else SCALE
            if partner in weights:
                yield partner, dequantize_checkpoint_tensor(partner, weights.pop(partner), tensor, kind, block)
            else:
                scales[partner] = (tensor, kind)
        elif tensor.dtype == FP8_DTYPE:
            if name in scales:
                scale, kind = scales.pop(name)
                yield name, dequantize_checkpoint_tensor(name, tensor, scale, kind, block)
            else:
                weights[name] = tensor
        else:
            yield name, tensor
    if weights:
        raise ValueError(f"checkpoint tensor(s) {sorted(weights)[:5]} are float8 but have no "
                         "'<name>_scale_inv' (or '_scale') tensor; the checkpoint is incomplete: copy it again")
    if scales:
        raise ValueError(f"checkpoint holds FP8 scales for {sorted(scales)[:5]} but not those weights; the "
                         "checkpoint is incomplete: copy it again")


__all__ = ["dequantize_checkpoint_tensor", "dequantized", "fp8_weight_names", "scale_partner"]
