"""What every model family shares: the forward over a flat batch and strict checkpoint loading.

A family subclasses :class:`DiffusionLM`, builds ``self.model`` (with ``layers`` and
``norm``) and ``self.lm_head``, implements :meth:`DiffusionLM.embed` and
:meth:`DiffusionLM.checkpoint_layout`, and inherits the rest. The layout maps every real
checkpoint tensor name to ``(parameter name, shard_id)``; loading is strict in both
directions, so a checkpoint of another family fails on its first foreign tensor name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from diffulex.layers.attention import Attention, KVCache
from diffulex.layers.attention_metadata import AttentionMetadata
from diffulex.models.weights import iter_checkpoint, load_into

# real checkpoint name -> (parameter name, shard_id passed to the parameter's weight_loader)
Layout = dict[str, tuple[str, Any]]
_REQUIRED = object()


def cfg_get(cfg: Any, name: str, default: Any = _REQUIRED, family: str = "model") -> Any:
    """Read field ``name`` of an HF config object or dict; ValueError if required and absent."""
    value = cfg.get(name, default) if isinstance(cfg, dict) else getattr(cfg, name, default)
    if value is _REQUIRED:
        raise ValueError(f"{family} config: required field {name!r} is missing")
    return value


def check_default_rope(cfg: Any, family: str) -> None:
    """Only plain RoPE is implemented: any ``rope_scaling`` other than default is an error."""
    rope_scaling = cfg_get(cfg, "rope_scaling", None)
    if rope_scaling and rope_scaling.get("rope_type", rope_scaling.get("type")) != "default":
        raise ValueError(f"{family} config: rope_scaling {rope_scaling!r} is not supported")


def gated_mlp_layout(ckpt: str, mod: str,
                     names: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")) -> Layout:
    """A gate/up/down checkpoint triple into a :class:`GatedMLP` at module path ``mod``."""
    gate, up, down = names
    return {f"{ckpt}.{gate}.weight": (f"{mod}.gate_up_proj.weight", 0),
            f"{ckpt}.{up}.weight": (f"{mod}.gate_up_proj.weight", 1),
            f"{ckpt}.{down}.weight": (f"{mod}.down_proj.weight", None)}


class PreNormDecoderLayer(nn.Module):
    """A pre-norm block (attention, then MLP or MoE, each with a residual) that passes the residual
    stream along, so every residual add is fused into the norm after it.

    Subclasses set ``input_layernorm``, ``post_attention_layernorm`` and ``mlp`` and name their
    attention module in ``attention_name`` (the checkpoint's name: ``self_attn``, ``attention``).
    """

    attention_name = "self_attn"

    def forward(self, h: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                kv_cache: KVCache | None, residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``h``: the previous sublayer's output (layer 0: the embeddings), ``residual``: the stream
        before it (None at layer 0) -> (this layer's MLP output, the stream before it); the values
        equal ``h = h + attn(norm(h)); h = h + mlp(norm(h))`` (see :meth:`DiffusionLM.forward`)."""
        # h, residual: [N, H]
        if residual is None:
            h, residual = self.input_layernorm(h), h
        else:
            h, residual = self.input_layernorm(h, residual)
        h = getattr(self, self.attention_name)(h, positions, meta, kv_cache)
        h, residual = self.post_attention_layernorm(h, residual)
        return self.mlp(h), residual


class DiffusionLM(nn.Module, ABC):
    """Base of every family: ``forward`` -> final-norm hidden ``[N, H]``, then ``compute_logits``.

    Subclasses set ``self.model`` (``.layers``, ``.norm``), ``self.lm_head`` and ``self.dtype``.
    """

    family_label = "model"  # used in error messages
    # Checkpoint-name substrings some exports use instead of ours (old -> new).
    checkpoint_aliases: dict[str, str] = {}
    # Checkpoint tensors that are recomputed buffers, skipped when present.
    ignored_suffixes: tuple[str, ...] = ("rotary_emb.inv_freq",)

    @abstractmethod
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``[N, H]`` (strategies mix these into soft inputs)."""

    @abstractmethod
    def checkpoint_layout(self) -> tuple[Layout, Layout]:
        """``(required, optional)`` maps: real checkpoint name -> (parameter name, shard_id)."""

    def may_stay_unloaded(self, param_name: str) -> bool:
        """Parameters a checkpoint legitimately lacks (defaults kept); none by default."""
        return False

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor, meta: AttentionMetadata,
                kv_caches: list[KVCache] | None = None,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states after the final norm, ``[N, H]``; exactly one of ids / embeds is given."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError(f"{type(self).__name__}.forward: pass exactly one of input_ids and inputs_embeds")
        layers = self.model.layers
        if kv_caches is not None and len(kv_caches) != len(layers):
            raise ValueError(f"kv_caches has {len(kv_caches)} entries for {len(layers)} layers")
        h = self.embed(input_ids) if inputs_embeds is None else inputs_embeds.to(self.dtype)  # [N, H]
        # Layers pass (sublayer output, residual stream) along, so every residual add happens
        # inside the next norm (one kernel); the values equal ``h = h + sublayer(norm(h))``.
        residual = None
        meta = meta.for_forward()  # derived grid maps are computed once for all layers
        for i, layer in enumerate(layers):
            h, residual = layer(h, positions, meta, kv_caches[i] if kv_caches is not None else None, residual)
        return self.model.norm(h, residual)[0] if residual is not None else self.model.norm(h)

    def graph_inputs(self, extras: dict) -> dict:
        """Strategy inputs for a CUDA-graphed forward (a family may shrink them first); unchanged here."""
        return extras

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary logits ``[M, V]`` in float32 for hidden rows ``[M, H]``."""
        return self.lm_head(hidden).float()

    def kv_cache_spec(self) -> list[tuple[int, int]]:
        """Per layer, in order: ``(KV heads on this rank, head_dim)`` of its cache."""
        return [(m.num_kv_heads, m.head_dim) for m in self.modules() if isinstance(m, Attention)]

    def load_named_tensors(self, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load ``(checkpoint name, full tensor)`` pairs; ValueError on unknown, missing or misshapen tensors."""
        required, optional = self.checkpoint_layout()
        params = dict(self.named_parameters())
        seen: dict[str, str] = {}
        for name, tensor in tensors:
            if name.endswith(self.ignored_suffixes):
                continue
            canon = name
            for old, new in self.checkpoint_aliases.items():
                canon = canon.replace(old, new)
            target = required.get(canon) or optional.get(canon)
            if target is None:
                raise ValueError(f"unexpected checkpoint tensor {name!r}: no {self.family_label} parameter maps "
                                 f"to it (is this a checkpoint of another family?)")
            if canon in seen:
                raise ValueError(f"checkpoint tensor {name!r} duplicates {seen[canon]!r}")
            seen[canon] = name
            load_into(params[target[0]], tensor, target[1], name)
        missing = sorted(set(required) - set(seen))
        if missing:
            raise ValueError(f"checkpoint is missing {len(missing)} tensor(s), first: {missing[:5]}")
        covered = {required.get(c, optional.get(c))[0] for c in seen}
        unloaded = sorted(n for n in params if n not in covered and not self.may_stay_unloaded(n))
        if unloaded:
            raise ValueError(f"parameters left unloaded: {unloaded[:5]}")

    def load_weights(self, path: str | Path) -> None:
        """Load every safetensors shard under ``path`` (via the index when present)."""
        self.load_named_tensors(iter_checkpoint(path))
