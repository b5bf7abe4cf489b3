"""The post-load pass: quantize every module that supports it (``quantize_weights(block)``) to FP8.

It runs after all weights are loaded (merged LoRA is already folded into them), on each rank's
local shard. A module is quantized when it has ``quantize_weights`` (the linear layers, and
any other module that implements it, e.g. stacked experts), and none of the full-precision
patterns (:func:`diffulex.config.quantization.full_precision_patterns`) matches its name or the
checkpoint name of a tensor it loads. On an FP8 checkpoint, a module whose checkpoint weights
were not all stored in FP8 stays in full precision too (the checkpoint's author kept it so).
Afterwards every module's ``after_quantization()`` (where defined) runs, e.g. LLaDA2's MoE pointing
its shared expert's FP8 layers back at the stacked experts' slot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from torch import nn

from diffulex.config.quantization import matches_module


def _clean(name: str) -> str:
    """A module name without the ``.base`` an unmerged LoRA wrapper inserts."""
    return name[: -len(".base")] if name.endswith(".base") else name.replace(".base.", ".")


def checkpoint_sources(model: nn.Module, names: Iterable[str]) -> dict[str, set[str]]:
    """Module name -> the checkpoint tensor names (present in ``names``) that load into its parameters."""
    layout = getattr(model, "checkpoint_layout", None)
    if layout is None:
        return {}
    required, optional = layout()
    aliases = getattr(model, "checkpoint_aliases", {})
    out: dict[str, set[str]] = {}
    for name in names:
        canon = name
        for old, new in aliases.items():
            canon = canon.replace(old, new)
        target = required.get(canon) or optional.get(canon)
        if target is not None:
            out.setdefault(target[0].rpartition(".")[0], set()).add(name)
    return out


def quantizable_modules(model: nn.Module, patterns: Iterable[str], sources: dict[str, set[str]] | None = None,
                        keep: set[str] = frozenset()) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every module with ``quantize_weights`` that no pattern matches (by its own
    name or a checkpoint name that loads into it) and that is not in ``keep``."""
    patterns = list(patterns)
    sources = sources or {}
    out = []
    for raw, module in model.named_modules():
        if not callable(getattr(module, "quantize_weights", None)):
            continue
        name = _clean(raw)
        ckpt = [n.rpartition(".")[0] for n in sources.get(name, ())]
        if name in keep or any(matches_module(c, p) for p in patterns for c in (name, *ckpt)):
            continue
        out.append((name, module))
    return out


def resolve_block(block: Iterable[int], modules: Iterable[nn.Module]) -> tuple[int, int]:
    """``block`` with each 0 ("the whole dimension") replaced by the largest such dimension of the weights."""
    bn, bk = (int(b) for b in block)
    if bn and bk:
        return bn, bk
    rows = cols = 1
    for module in modules:
        for p in module.parameters(recurse=False):
            if p.dim() >= 2:
                rows, cols = max(rows, p.shape[-2]), max(cols, p.shape[-1])
    return bn or rows, bk or cols


def quantize_modules(model: nn.Module, block: Iterable[int], patterns: Iterable[str],
                     sources: dict[str, set[str]] | None = None, keep: set[str] = frozenset()) -> list[str]:
    """Quantize the :func:`quantizable_modules` of ``model`` in tiles ``block``; their names, in order."""
    targets = quantizable_modules(model, patterns, sources, keep)
    tile = resolve_block(block, [m for _, m in targets])
    for _, module in targets:
        module.quantize_weights(tile)
    for module in model.modules():  # e.g. LLaDA2's MoE re-sharing its shared expert's FP8 slot
        hook = getattr(module, "after_quantization", None)
        if callable(hook):
            hook()
    return [name for name, _ in targets]


def quantize_loaded_model(model: nn.Module, config: Any) -> list[str]:
    """Apply ``config.quantization`` to a loaded model (nothing unless it resolved to ``fp8``); the names
    of the quantized modules. On an FP8 checkpoint the modules it stores in full precision are kept."""
    from diffulex.config.enums import WeightQuant
    from diffulex.config.quantization import full_precision_patterns

    q = config.quantization
    if q.weights != WeightQuant.FP8:
        return []
    from diffulex.lora.adapter import checkpoint_tensor_names
    from diffulex.quantization.checkpoint import fp8_weight_names

    names = checkpoint_tensor_names(Path(config.model.path))
    sources = checkpoint_sources(model, names)
    keep: set[str] = set()
    ck = getattr(config, "checkpoint_quant", None)
    if ck is not None and ck.method == "fp8":
        fp8 = fp8_weight_names(names)
        keep = {mod for mod, srcs in sources.items()
                if any(s.endswith(".weight") and s not in fp8 for s in srcs)}
    return quantize_modules(model, q.weight_block_size, full_precision_patterns(config), sources, keep)


__all__ = ["checkpoint_sources", "quantizable_modules", "quantize_loaded_model", "quantize_modules",
           "resolve_block"]
