"""PEFT LoRA adapters: merged into the weights at load, or applied unmerged per forward.

    from diffulex.lora import load_weights_with_lora
    load_weights_with_lora(model, checkpoint_path, adapter_path, merge=True)
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from diffulex.lora.adapter import (AdapterConfig, LoRAWeights, check_adapter, load_adapter, matches_target,
                                   read_adapter_config)
from diffulex.lora.merge import LoRATarget, merged_checkpoint, resolve_targets
from diffulex.lora.unmerged import LoRALinear, attach_unmerged, unmerged_groups


def load_weights_with_lora(model: nn.Module, checkpoint: str | Path, adapter: str | Path, merge: bool) -> None:
    """Load ``checkpoint`` into ``model`` with the adapter at ``adapter`` merged or attached unmerged."""
    from diffulex.models.weights import iter_checkpoint

    _, loras = load_adapter(adapter)
    targets = resolve_targets(model, loras)
    if merge:
        model.load_named_tensors(merged_checkpoint(model, iter_checkpoint(checkpoint), targets))
    else:
        unmerged_groups(model, targets)  # refuse unsupported targets before the (long) load
        model.load_weights(checkpoint)
        attach_unmerged(model, targets)


__all__ = ["AdapterConfig", "LoRALinear", "LoRATarget", "LoRAWeights", "attach_unmerged", "check_adapter",
           "load_adapter", "load_weights_with_lora", "matches_target", "merged_checkpoint", "read_adapter_config",
           "resolve_targets", "unmerged_groups"]
