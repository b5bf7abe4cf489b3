"""Placing LoRA deltas onto a model's parameters, and merging them into the checkpoint at load.

An adapted checkpoint module ``X`` changes exactly the parameter slice ``X.weight`` loads
into: the family's ``checkpoint_layout()`` names the parameter and shard, and that
parameter's ``weight_loader`` does the slicing (fused q|k|v and gate|up shards, TP ranks,
experts), so LoRA needs no per-family code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import torch

from diffulex.lora.adapter import LoRAWeights


@dataclass(frozen=True)
class LoRATarget:
    """One adapted checkpoint tensor and where it loads."""

    lora: LoRAWeights
    ckpt_name: str  # canonical checkpoint name of the base tensor (``module.weight``)
    param_name: str  # the model parameter it loads into
    shard_id: Any  # passed to the parameter's weight_loader


def canonical(model: torch.nn.Module, name: str) -> str:
    """A checkpoint name after the family's aliases (the layout's spelling)."""
    for old, new in model.checkpoint_aliases.items():
        name = name.replace(old, new)
    return name


def resolve_targets(model: torch.nn.Module, loras: Iterable[LoRAWeights]) -> list[LoRATarget]:
    """Map every adapted module to its parameter; ValueError when the base tensor is not in the layout."""
    required, optional = model.checkpoint_layout()
    out = []
    for lora in loras:
        name = canonical(model, lora.module + ".weight")
        target = required.get(name) or optional.get(name)
        if target is None:
            raise ValueError(f"LoRA module {lora.module!r}: the {model.family_label} model has no checkpoint tensor "
                             f"{lora.module + '.weight'!r} to adapt (is the adapter for another model family?)")
        out.append(LoRATarget(lora, name, target[0], target[1]))
    return out


def merged_checkpoint(model: torch.nn.Module, tensors: Iterable[tuple[str, torch.Tensor]],
                      targets: list[LoRATarget]) -> Iterator[tuple[str, torch.Tensor]]:
    """The checkpoint stream with ``scale * B @ A`` added (in float32) to each adapted tensor.

    Feeding this to ``load_named_tensors`` merges through the normal ``weight_loader`` slicing.
    ValueError when an adapted tensor's shape differs from the delta's or never streams by.
    """
    pending = {t.ckpt_name: t.lora for t in targets}
    for name, tensor in tensors:
        lora = pending.pop(canonical(model, name), None)
        if lora is not None:
            delta = lora.delta()  # [out, in]
            if tuple(delta.shape) != tuple(tensor.shape):
                raise ValueError(f"LoRA module {lora.module!r}: B @ A has shape {tuple(delta.shape)} but checkpoint "
                                 f"tensor {name!r} has {tuple(tensor.shape)}; the adapter was trained on another "
                                 "model size")
            tensor = tensor.float() + delta
        yield name, tensor
    if pending:
        raise ValueError(f"LoRA modules {sorted(lora.module for lora in pending.values())[:5]} adapt tensors the "
                         "checkpoint does not hold (e.g. a tied LM head); drop them from the adapter")
