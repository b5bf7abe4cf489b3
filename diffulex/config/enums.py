"""Closed sets of choices used by the config tree.

They are ``str`` Enums so that OmegaConf/Hydra can type-check them (it rejects
``typing.Literal``) and so that a plain string compares equal to its member.
"""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

E = TypeVar("E", bound=type[Enum])


def by_value(cls: E) -> E:
    """Name each member by its value, keeping the upper-case Python name as an alias.

    OmegaConf looks str Enums up by member *name* and prints the name (``--help``, ``--cfg``,
    saved configs): with ``member.name == member.value`` users read and type the documented
    lower-case values (``confidence=margin``), while code keeps ``ConfidenceKind.MARGIN``.
    """
    for member in list(cls):
        cls._member_map_.setdefault(member.value, member)
        member._name_ = member.value
    return cls


@by_value
class StrategyName(str, Enum):
    """Decoding strategies (see docs/strategies.md)."""

    MULTI_BD = "multi_bd"
    D2F = "d2f"
    DMAX = "dmax"
    FAST_DLLM_V2 = "fast_dllm_v2"
    DIFFUSION_GEMMA = "diffusion_gemma"
    VANILLA = "vanilla"


@by_value
class SamplingMode(str, Enum):
    """How a step turns logits into token decisions."""

    NAIVE = "naive"  # mask -> token only; decided tokens are final
    EDIT = "edit"  # LLaDA2.1-style: mask -> token plus token -> token rewrites


@by_value
class ConfidenceKind(str, Enum):
    """What "confidence" of a predicted token means for acceptance."""

    PROBABILITY = "probability"  # p(chosen token)
    MARGIN = "margin"  # p(top1) - p(top2)
    NEG_ENTROPY = "neg_entropy"  # sum p log p over the vocabulary


@by_value
class RemaskingKind(str, Enum):
    """Which masked positions the vanilla LLaDA loop fills at each step."""

    LOW_CONFIDENCE = "low_confidence"
    RANDOM = "random"


@by_value
class DType(str, Enum):
    """Weight / KV-cache dtype. ``auto``: bfloat16 on CUDA, float32 on CPU."""

    AUTO = "auto"
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"


@by_value
class Device(str, Enum):
    """Where the model runs. ``auto``: CUDA when available, else CPU."""

    AUTO = "auto"
    CUDA = "cuda"
    CPU = "cpu"


@by_value
class KernelBackend(str, Enum):
    """Implementation of the hot ops. ``auto``: Triton on CUDA, PyTorch on CPU."""

    AUTO = "auto"
    TRITON = "triton"
    TORCH = "torch"


def choices(enum_cls: type[Enum]) -> str:
    """Comma-separated allowed values, for error messages."""
    return ", ".join(repr(m.value) for m in enum_cls)


@by_value
class WeightQuant(str, Enum):
    """Weight format of the quantizable layers (see docs/quantization.md).

    ``auto``: the checkpoint's own (fp8 for an FP8 checkpoint, else none); ``none``: full
    precision in ``model.dtype`` (an FP8 checkpoint is dequantized at load); ``fp8``: e4m3
    weights with one float32 scale per tile (a full-precision checkpoint is quantized at load).
    """

    AUTO = "auto"
    NONE = "none"
    FP8 = "fp8"
