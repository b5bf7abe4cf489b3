"""Unmerged LoRA: each adapted linear layer adds ``scale * (x A^T) B^T`` to its output.

Column-parallel layers (fused q|k|v, gate|up, plain column) keep ``A`` whole and this rank's
rows of ``B``, placed at the adapted shard's rows; row-parallel layers keep this rank's
columns of ``A`` and all of ``B``, and their partial sums join the layer's own all-reduce.
Both slices come from the layer's ``weight_loader``, the same slicing as the base weight.
The vocabulary-parallel LM head returns full-vocabulary logits on every rank, so its update
keeps ``A`` and ``B`` whole.
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import nn

from diffulex.layers.embedding import ParallelLMHead
from diffulex.layers.linear import LinearBase, RowParallelLinear
from diffulex.lora.merge import LoRATarget


class LoRALinear(nn.Module):
    """A linear layer plus its low-rank update; ``lora_a: [R, in_local]``, ``lora_b: [out_local, R]`` (scaled)."""

    def __init__(self, base: LinearBase | ParallelLMHead, lora_a: torch.Tensor, lora_b: torch.Tensor) -> None:
        super().__init__()
        self.base = base
        self.register_buffer("lora_a", lora_a)
        self.register_buffer("lora_b", lora_b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [N, in_local] -> [N, out_local]
        delta = F.linear(F.linear(x, self.lora_a), self.lora_b)  # [N, out_local]
        base = self.base
        if isinstance(base, RowParallelLinear):  # partial sums: reduce together with the base product
            y = base.tp.all_reduce(base.matmul(x) + delta)  # the FP8 product too, once quantized
            return y if base.bias is None else y + base.bias
        return base(x) + delta


def _sliced(base: LinearBase, full: torch.Tensor, local_shape: tuple[int, ...], shard_id, what: str) -> torch.Tensor:
    """This rank's slice of ``full`` as the layer's weight_loader cuts it (zeros outside the shard)."""
    out = torch.zeros(local_shape, dtype=torch.float32, device=base.weight.device)
    try:
        base.weight_loader(out, full.float(), shard_id)
    except ValueError as err:
        raise ValueError(f"{what}: {err}; the adapter was trained on another model size") from None
    return out


def _build(base: LinearBase | ParallelLMHead, targets: list[LoRATarget]) -> LoRALinear:
    out_local, in_local = base.weight.shape
    row = isinstance(base, RowParallelLinear)
    if isinstance(base, ParallelLMHead):
        (t,) = targets
        lora = t.lora
        if tuple(lora.b.shape[:1]) + tuple(lora.a.shape[1:]) != (base.vocab_size, in_local):
            raise ValueError(f"LoRA module {lora.module!r}: B @ A has shape {(lora.b.shape[0], lora.a.shape[1])}, "
                             f"the LM head {(base.vocab_size, in_local)}; the adapter was trained on another model")
        dev, dtype = base.weight.device, base.weight.dtype
        return LoRALinear(base, lora.a.to(dev, dtype), (lora.scale * lora.b.float()).to(dev, dtype))
    a_parts, b_parts = [], []
    for t in targets:
        lora, r = t.lora, t.lora.a.shape[0]
        what = f"LoRA module {lora.module!r}"
        if row:  # A: this rank's input columns; B whole
            a = _sliced(base, lora.a, (r, in_local), t.shard_id, what + " lora_A")
            if lora.b.shape[0] != out_local:
                raise ValueError(f"{what}: lora_B has {lora.b.shape[0]} rows, the layer {out_local} outputs")
            b = lora.b.float().to(a.device)
        else:  # A whole; B: this rank's rows of the shard
            if lora.a.shape[1] != in_local:
                raise ValueError(f"{what}: lora_A has {lora.a.shape[1]} inputs, the layer {in_local}")
            a = lora.a.float().to(base.weight.device)
            b = _sliced(base, lora.b, (out_local, r), t.shard_id, what + " lora_B")
        a_parts.append(a)
        b_parts.append(lora.scale * b)
    dtype = base.dtype  # the activation dtype (the weight may be FP8)
    return LoRALinear(base, torch.cat(a_parts).to(dtype), torch.cat(b_parts, dim=1).to(dtype))


def unmerged_groups(model: nn.Module, targets: list[LoRATarget]) -> dict[str, list[LoRATarget]]:
    """Targets grouped by the module they adapt; ValueError for a module unmerged LoRA cannot wrap."""
    groups: dict[str, list[LoRATarget]] = defaultdict(list)
    for t in targets:
        groups[t.param_name.rpartition(".")[0]].append(t)
    for path, group in groups.items():
        base = model.get_submodule(path)
        is_weight = all(t.param_name.endswith(".weight") for t in group)
        if not (is_weight and isinstance(base, (LinearBase, ParallelLMHead))):
            raise ValueError(f"LoRA module {group[0].lora.module!r} adapts {group[0].param_name!r} of a "
                             f"{type(base).__name__}; unmerged LoRA supports linear layers only. Set "
                             "lora.merge=true (pre_merge_lora=True) to merge the adapter at load")
    return groups


def attach_unmerged(model: nn.Module, targets: list[LoRATarget]) -> None:
    """Replace every adapted linear layer of the loaded ``model`` by a :class:`LoRALinear`."""
    for path, group in unmerged_groups(model, targets).items():
        parent, _, child = path.rpartition(".")
        setattr(model.get_submodule(parent), child, _build(model.get_submodule(path), group))
