"""The engine's model of a family made trainable, and its parameters written back under the
checkpoint's own tensor names (the inverse of the loaders)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from diffulex.models.base import DiffusionLM
from diffulex.registry import AutoModel
from diffulex.train.attention import use_training_attention

Spec = tuple[str, tuple[int, ...], str]  # (checkpoint name, shape, init kind) as in diffulex.tiny.weights


def _unfold_shared_experts(model: nn.Module) -> None:
    """Give a shared expert folded into the stacked experts' storage its own parameters.

    On one rank LLaDA2's shared expert is a view of an extra slot of the routed experts'
    storage; an optimizer stepping both would update that memory twice. Training runs the
    unfolded path (the reference MoE), and the loaders fold it again when the checkpoint loads.
    """
    for module in model.modules():
        shared = getattr(module, "shared_experts", None)
        if shared is None or not getattr(getattr(module, "experts", None), "extra_slots", 0):
            continue
        for linear in (shared.gate_up_proj, shared.down_proj):
            old = linear.weight
            linear.weight = nn.Parameter(old.detach().clone())
            linear.weight.__dict__.update(old.__dict__)  # weight_loader


def init_parameters(model: nn.Module, generator: torch.Generator, std: float = 0.02) -> None:
    """Matrices N(0, std); 1-D weights (norms) 1; biases and router biases 0."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            else:
                p.copy_(torch.randn(p.shape, generator=generator) * std)


def build_trainable(family: str, hf_config: dict, generator: torch.Generator,
                    device: torch.device | str = "cpu") -> DiffusionLM:
    """The engine's ``family`` model for ``hf_config`` (config.json contents), freshly initialised,
    with differentiable dense attention and every parameter requiring grad."""
    import diffulex.models  # noqa: F401  (registers the families)

    model = AutoModel.get(family)(hf_config, dtype=torch.float32)
    _unfold_shared_experts(model)
    init_parameters(model, generator)
    use_training_attention(model)
    for p in model.parameters():
        p.requires_grad_(True)
    return model.to(device)


def export_tensors(model: DiffusionLM, specs: Sequence[Spec]) -> dict[str, torch.Tensor]:
    """Checkpoint tensors (names and shapes of ``specs``) holding ``model``'s parameters.

    Each parameter's own ``weight_loader`` is run once on an index-valued probe, which shows
    where every checkpoint element lands; the tensor is read back from those places. So the
    export is exactly the inverse of loading, for every layout the loaders know.
    """
    required, optional = model.checkpoint_layout()
    layout = {**optional, **required}
    params = dict(model.named_parameters())
    out: dict[str, torch.Tensor] = {}
    for name, shape, _ in specs:
        if name not in layout:
            raise ValueError(f"export: checkpoint tensor {name!r} has no {model.family_label} parameter")
        pname, shard = layout[name]
        param = params[pname]
        numel = torch.Size(shape).numel()
        probe = nn.Parameter(torch.full(param.shape, -1.0, dtype=torch.float64), requires_grad=False)
        param.weight_loader(probe, torch.arange(numel, dtype=torch.float64).view(shape), shard)
        where = probe.data >= 0
        index = probe.data[where].long()
        if index.numel() != numel or torch.unique(index).numel() != numel:
            raise ValueError(f"export: the loader of {pname!r} does not place checkpoint tensor {name!r} "
                             f"one to one ({index.numel()} of {numel} elements)")
        flat = torch.empty(numel, dtype=torch.float32)
        flat[index] = param.detach().float().cpu()[where.cpu()]
        out[name] = flat.view(shape).contiguous()
    return out
