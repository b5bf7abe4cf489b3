"""The config tree: small dataclasses per group composed into one validated Config."""

from .aliases import FLAT_ALIASES, GROUPS
from .cache import CacheConfig
from .config import Config
from .enums import (ConfidenceKind, Device, DType, KernelBackend, RemaskingKind, SamplingMode,
                    StrategyName, WeightQuant)
from .families import FAMILIES, MODEL_NAMES, family_of
from .lora import LoRAConfig
from .model import ModelConfig
from .parallel import ParallelConfig
from .quantization import QuantizationConfig
from .runtime import RuntimeConfig
from .sampling import SAMPLING_CONFIGS, EditSamplingConfig, SamplingConfig
from .strategy import (STRATEGY_CONFIGS, D2FStrategyConfig, DiffusionGemmaStrategyConfig,
                       DMaxStrategyConfig, FastDLLMv2StrategyConfig, MultiBDStrategyConfig,
                       PipelinedStrategyConfig, StrategyConfig, VanillaStrategyConfig)

__all__ = [
    "CacheConfig", "Config", "ConfidenceKind", "D2FStrategyConfig", "DiffusionGemmaStrategyConfig",
    "DMaxStrategyConfig", "Device", "DType", "EditSamplingConfig", "FAMILIES", "FLAT_ALIASES",
    "FastDLLMv2StrategyConfig", "GROUPS", "KernelBackend", "LoRAConfig", "MODEL_NAMES", "ModelConfig",
    "MultiBDStrategyConfig", "ParallelConfig", "PipelinedStrategyConfig", "QuantizationConfig", "RemaskingKind",
    "RuntimeConfig", "SAMPLING_CONFIGS", "STRATEGY_CONFIGS", "SamplingConfig", "SamplingMode",
    "StrategyConfig", "StrategyName", "VanillaStrategyConfig", "WeightQuant", "family_of",
]
