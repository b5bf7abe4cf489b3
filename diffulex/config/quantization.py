"""The ``quantization`` config group: the weight format of the linear layers (and experts).

``weights``: ``auto`` (the checkpoint's own format: fp8 when its config.json has
``quantization_config.quant_method == "fp8"``, else none), ``none`` (full precision in
``model.dtype``; an FP8 checkpoint is dequantized at load) or ``fp8`` (e4m3 weights with one
float32 scale per ``weight_block_size`` tile; a full-precision checkpoint is quantized at load).
The format itself: :mod:`diffulex.quantization.fp8`; the user guide: docs/quantization.md.

This module also reads a checkpoint's ``quantization_config`` (plain JSON, no torch).
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from .enums import WeightQuant
from .errors import Notes, coerce_enum, config_error

if TYPE_CHECKING:
    from .config import Config

# Modules never quantized, whatever ``ignore`` says (matched like ``ignore``, see
# :func:`matches_module`): the LM head and embeddings (not linear layers here anyway), MoE
# routers and gates (their logits decide the expert selection; LLaDA2 / SDAR routers are no
# linear layers, DiffusionGemma's ``router.proj`` and SDAR-MoE's ``shared_expert_gate`` are).
ALWAYS_FULL_PRECISION: tuple[str, ...] = ("lm_head", "*embed*", "*router*", "gate", "*shared_expert_gate")

_BLOCK_ALLOWED = ("two ints [block_n, block_k], each >= 1, or 0 for the whole dimension (e.g. [128, 128]; "
                  "[1, 0]: one scale per output channel; [0, 0]: one per tensor)")


@dataclass
class QuantizationConfig:
    """How the weights of the quantizable layers are stored and multiplied."""

    # auto: the checkpoint's own format (fp8 for an FP8 checkpoint, else none); none: full
    # precision (an FP8 checkpoint is dequantized to model.dtype at load); fp8: e4m3 weights with
    # one float32 scale per tile (a bf16 / fp32 checkpoint is quantized at load).
    weights: WeightQuant = WeightQuant.AUTO
    # Tile [block_n, block_k] of one scale when quantizing at load; 0 = the whole dimension
    # ([1, 0]: per output channel). An FP8 checkpoint's tensors keep their own weight_block_size.
    weight_block_size: list[int] = field(default_factory=lambda: [128, 128])
    # Module-name patterns kept in full precision (fnmatch with * ? [ ], else a dotted part of the
    # module name: "dense" matches model.layers.0.attention.dense). Always kept too: lm_head,
    # embeddings, MoE routers / gates and the checkpoint's modules_to_not_convert.
    ignore: list[str] = field(default_factory=list)

    def validate(self) -> None:
        self.weights = coerce_enum(WeightQuant, "quantization.weights", self.weights,
                                   "set quantization.weights to 'auto' (the checkpoint's format), 'none' or 'fp8'")
        self.weight_block_size = parse_block("quantization.weight_block_size", self.weight_block_size,
                                             allow_zero=True)
        ignore = self.ignore
        if isinstance(ignore, str) or not isinstance(ignore, (list, tuple)) or not all(
                isinstance(p, str) and p.strip() for p in ignore):
            raise config_error("quantization.ignore", ignore, "a list of non-empty module-name patterns",
                               "e.g. ignore=['dense', 'model.layers.0.*']; an empty list keeps only the "
                               "built-in exclusions")
        self.ignore = list(ignore)


def parse_block(name: str, value: Any, allow_zero: bool) -> list[int]:
    """``value`` as ``[block_n, block_k]`` or a ValueError naming ``name``."""
    try:
        items = list(value)
    except TypeError:
        items = None
    lo = 0 if allow_zero else 1
    if (items is None or isinstance(value, (str, bytes)) or len(items) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) or v < lo for v in items)):
        allowed = _BLOCK_ALLOWED if allow_zero else "two ints [block_n, block_k], each >= 1"
        raise config_error(name, value, allowed, f"set {name}=[128, 128] (the common block-wise FP8 tiles)")
    return [int(v) for v in items]


def matches_module(name: str, pattern: str) -> bool:
    """Whether module ``name`` matches ``pattern``: fnmatch when it has ``* ? [``, else a run of
    whole dotted parts (``"mlp.gate"`` matches ``model.layers.1.mlp.gate``, not ``mlp.gate_proj``)."""
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return f".{pattern}." in f".{name}."


@dataclass(frozen=True)
class CheckpointQuant:
    """A checkpoint's own weight format, from its config.json ``quantization_config``.

    ``method``: ``"fp8"`` or None (full precision); ``block``: ``(block_n, block_k)`` of the
    scales (None: one scale per tensor, the older ``weight_scale`` form); ``not_converted``:
    its ``modules_to_not_convert`` / ``ignored_layers`` (checkpoint module names or patterns).
    """

    method: Optional[str] = None
    block: Optional[tuple[int, int]] = None
    not_converted: tuple[str, ...] = ()
    activation_scheme: str = "dynamic"


def checkpoint_quantization(path: str | Path) -> CheckpointQuant:
    """Read ``path/config.json``'s ``quantization_config``; ValueError for formats Diffulex cannot load."""
    cfg_file = Path(path) / "config.json"
    try:
        data = json.loads(cfg_file.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return CheckpointQuant()  # the config loader reports a missing / broken config.json
    qc = data.get("quantization_config") if isinstance(data, dict) else None
    if not qc:
        return CheckpointQuant()
    where = f"{cfg_file}: quantization_config"
    if not isinstance(qc, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(qc).__name__}; fix or remove it")
    method = qc.get("quant_method")
    if method != "fp8":
        raise ValueError(f"{where}.quant_method={method!r} is not supported: Diffulex loads full-precision "
                         "checkpoints and block-wise FP8 ones (quant_method 'fp8'). Fix: use a bf16 / fp32 "
                         "checkpoint (and quantization.weights=fp8 to quantize it at load) or an FP8 one")
    fmt = qc.get("fmt", "e4m3")
    if fmt != "e4m3":
        raise ValueError(f"{where}.fmt={fmt!r} is not supported: only e4m3 FP8 weights "
                         "(float8_e4m3fn) load. Fix: convert the checkpoint with python -m "
                         "diffulex.quantization.convert from a full-precision one")
    block = qc.get("weight_block_size")
    if block is not None:
        block = tuple(parse_block(f"{where}.weight_block_size", block, allow_zero=False))
    not_converted: list[str] = []
    for key in ("modules_to_not_convert", "ignored_layers"):
        value = qc.get(key) or []
        if isinstance(value, str) or not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{where}.{key}={value!r} must be a list of module names; fix the checkpoint's "
                             "config.json")
        not_converted += value
    scheme = qc.get("activation_scheme", "dynamic")
    if scheme not in ("dynamic", "static"):
        raise ValueError(f"{where}.activation_scheme={scheme!r}: expected 'dynamic' or 'static'; fix the "
                         "checkpoint's config.json")
    return CheckpointQuant("fp8", block, tuple(dict.fromkeys(not_converted)), scheme)


def resolve_quantization(cfg: "Config", notes: Notes) -> None:
    """Settle ``quantization.weights`` (auto -> fp8 | none) and the tiles against the checkpoint.

    Sets ``cfg.checkpoint_quant`` (:class:`CheckpointQuant`). On an FP8 checkpoint with
    ``weights`` auto or fp8 its own ``weight_block_size`` replaces the configured one (a note
    when fp8 was asked for with other tiles): its tensors are requantized in their own tiles,
    which gives back the checkpoint's FP8 values.
    """
    q = cfg.quantization
    ck = cfg.checkpoint_quant = checkpoint_quantization(cfg.model.path)
    auto = q.weights == WeightQuant.AUTO
    if auto:
        q.weights = WeightQuant.FP8 if ck.method == "fp8" else WeightQuant.NONE
    if ck.method == "fp8" and q.weights == WeightQuant.FP8:
        own = list(ck.block) if ck.block is not None else [0, 0]
        if auto:  # the checkpoint's own format, tiles included
            q.weight_block_size = own
        elif own != q.weight_block_size:
            notes.changed("quantization.weight_block_size", q.weight_block_size, own,
                          "an FP8 checkpoint's tensors keep their own tiles (config.json "
                          "quantization_config.weight_block_size; none there: one scale per tensor)")
            q.weight_block_size = own
    if ck.method == "fp8" and ck.activation_scheme == "static":
        notes.messages.append("quantization: the checkpoint's static activation scales (input_scale) are not "
                              "used; activations stay in model.dtype (W8A16)")


def full_precision_patterns(cfg: "Config") -> list[str]:
    """Every module pattern kept in full precision: built-in, ``quantization.ignore`` and the checkpoint's."""
    ck = getattr(cfg, "checkpoint_quant", None) or CheckpointQuant()
    return list(dict.fromkeys([*ALWAYS_FULL_PRECISION, *cfg.quantization.ignore, *ck.not_converted]))


__all__ = ["ALWAYS_FULL_PRECISION", "CheckpointQuant", "QuantizationConfig", "checkpoint_quantization",
           "full_precision_patterns", "matches_module", "parse_block", "resolve_quantization"]
