"""The ``strategy`` config group: one dataclass per decoding strategy.

Each subclass declares only the knobs its strategy uses, and ``normalize`` applies the
strategy's rules (the seed's normalization table). Optional fields left at ``None`` take
the strategy's value silently; a value the user set that the strategy must override is
replaced and logged once (see :class:`~diffulex.config.errors.Notes`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Optional

from .enums import RemaskingKind, SamplingMode, StrategyName
from .errors import Notes, check_range, coerce_enum, config_error, is_power_of_two

if TYPE_CHECKING:
    from .config import Config


def _resolve(obj: Any, attr: str, value: Any, label: str, why: str, notes: Notes, force: bool) -> None:
    """Fill ``obj.attr`` with ``value`` when unset; when ``force``, override a differing user value."""
    current = getattr(obj, attr)
    if current is None:
        setattr(obj, attr, value)
    elif force and current != value:
        notes.changed(label, current, value, why)
        setattr(obj, attr, value)


@dataclass
class StrategyConfig:
    """Fields shared by every strategy. Use a subclass (one per strategy)."""

    name: StrategyName = StrategyName.MULTI_BD
    # Tokens per diffusion block. None: the strategy's default.
    block_size: Optional[int] = None
    # Blocks in flight per request. None: the strategy's default.
    buffer_size: Optional[int] = None
    # True: the prompt attends to itself bidirectionally (d2f); False: block-causal.
    multi_block_prefix_full: Optional[bool] = None

    DEFAULT_BLOCK_SIZE: ClassVar[int] = 32
    DEFAULT_BUFFER_SIZE: ClassVar[int] = 1
    FORCED_BUFFER_SIZE: ClassVar[Optional[int]] = None
    FORCED_PREFIX_FULL: ClassVar[Optional[bool]] = False
    FORCED_PREFIX_CACHING: ClassVar[Optional[bool]] = None  # None: on unless the user turns it off
    DEFAULT_PAGE_SIZE: ClassVar[int] = 32

    @property
    def strategy(self) -> StrategyName:
        return StrategyName(self.name)

    def normalize(self, cfg: "Config", notes: Notes) -> None:
        """Apply this strategy's rules to itself and to ``cfg.cache``."""
        n = self.strategy.value
        self.name = coerce_enum(StrategyName, "strategy.name", self.name)
        expected = STRATEGY_CONFIGS[self.strategy]
        if type(self) is not expected:
            raise config_error("strategy.name", self.name, f"{expected.__name__} for this name",
                               "build the strategy with decoding_strategy=... or the matching preset")
        _resolve(self, "block_size", self.DEFAULT_BLOCK_SIZE, "strategy.block_size", n, notes, force=False)
        forced_buf = self.FORCED_BUFFER_SIZE
        _resolve(self, "buffer_size", forced_buf or self.DEFAULT_BUFFER_SIZE, "strategy.buffer_size",
                 f"{n} keeps one block in flight", notes, force=forced_buf is not None)
        if self.FORCED_PREFIX_FULL is not None:
            _resolve(self, "multi_block_prefix_full", self.FORCED_PREFIX_FULL,
                     "strategy.multi_block_prefix_full", f"{n} requires it", notes, force=True)
        if self.FORCED_PREFIX_CACHING is not None:
            why = f"{n}: the prompt's KV depends on the whole prompt, so pages cannot be shared"
            _resolve(cfg.cache, "enable_prefix_caching", self.FORCED_PREFIX_CACHING,
                     "cache.enable_prefix_caching", why, notes, force=True)
        _resolve(cfg.cache, "enable_prefix_caching", True, "cache.enable_prefix_caching", n, notes, force=False)
        _resolve(cfg.cache, "page_size", self.DEFAULT_PAGE_SIZE, "cache.page_size", n, notes, force=False)
        self.validate()

    def validate(self) -> None:
        if not (is_power_of_two(self.block_size) and self.block_size <= 1024):
            raise config_error("strategy.block_size", self.block_size, "a power of two in [1, 1024]",
                               "use the block size the checkpoint was trained with (32 for LLaDA2, 4 for SDAR)")
        check_range("strategy.buffer_size", self.buffer_size, 1, 64, integer=True)


@dataclass
class PipelinedStrategyConfig(StrategyConfig):
    """Blocks pipelined in a buffer: block k+1 starts while block k is still decoding."""

    # Fill masks whose confidence exceeds this.
    accept_threshold: float = 0.9
    # Start the next block once this fraction of the last block is decided.
    add_block_threshold: float = 0.1
    # While the previous block is below this fraction decided, a block only takes
    # tokens above accept_threshold; afterwards it must take at least its best token.
    semi_complete_threshold: float = 0.9
    # A new block also needs this fraction of the last block's decided tokens unchanged
    # since the previous step (edit sampling; 0 disables the check).
    token_stability_threshold: float = 0.0

    def validate(self) -> None:
        super().validate()
        for f in ("accept_threshold", "add_block_threshold", "semi_complete_threshold",
                  "token_stability_threshold"):
            check_range(f"strategy.{f}", getattr(self, f), 0.0, 1.0)


@dataclass
class MultiBDStrategyConfig(PipelinedStrategyConfig):
    """Block diffusion, block-causal everywhere; buffer_size 1 = the official LLaDA2/SDAR loop."""

    name: StrategyName = StrategyName.MULTI_BD


@dataclass
class D2FStrategyConfig(PipelinedStrategyConfig):
    """Discrete diffusion forcing: pipelined blocks over a bidirectionally attended prompt."""

    name: StrategyName = StrategyName.D2F
    DEFAULT_BUFFER_SIZE: ClassVar[int] = 4
    FORCED_PREFIX_FULL: ClassVar[Optional[bool]] = True
    FORCED_PREFIX_CACHING: ClassVar[Optional[bool]] = False


@dataclass
class DMaxStrategyConfig(StrategyConfig):
    """DMax soft parallel decoding (edit-capable LLaDA2 checkpoints, sampling=edit)."""

    name: StrategyName = StrategyName.DMAX
    # Masks are filled left to right while confidence >= this (at least one per step).
    accept_threshold: float = 0.5
    # A block commits once every position's top-1 probability reaches this.
    commit_confidence: float = 0.9
    # Soft inputs mix the top-k predicted embeddings (plus the mask embedding).
    token_merge_top_k: int = 1
    # Rescale a mixture to the probability-weighted norm of its parts.
    token_merge_renormalize: bool = True
    # Blend of soft mixture (1.0) and hard top-1 embedding (0.0) fed back.
    token_merge_weight: float = 1.0
    # Iterations per block at most. None: block_size.
    max_steps_per_block: Optional[int] = None
    FORCED_BUFFER_SIZE: ClassVar[Optional[int]] = 1

    def normalize(self, cfg: "Config", notes: Notes) -> None:
        super().normalize(cfg, notes)
        if cfg.sampling.mode != SamplingMode.EDIT:
            raise config_error("sampling.mode", cfg.sampling.mode, "'edit' with strategy dmax",
                               "pass sampling_mode='edit' (Hydra: sampling=edit)")
        _resolve(self, "max_steps_per_block", self.block_size, "strategy.max_steps_per_block", "dmax", notes, False)
        check_range("strategy.max_steps_per_block", self.max_steps_per_block, 1, None, integer=True)

    def validate(self) -> None:
        super().validate()
        check_range("strategy.accept_threshold", self.accept_threshold, 0.0, 1.0)
        check_range("strategy.commit_confidence", self.commit_confidence, 0.0, 1.0)
        check_range("strategy.token_merge_top_k", self.token_merge_top_k, 1, 64, integer=True)
        check_range("strategy.token_merge_weight", self.token_merge_weight, 0.0, 1.0)


@dataclass
class FastDLLMv2StrategyConfig(StrategyConfig):
    """Fast-dLLM v2: blocks of block_size split into buffer_size sub-blocks, dual cache."""

    name: StrategyName = StrategyName.FAST_DLLM_V2
    # Fill sub-block masks above this (the best one is always taken).
    accept_threshold: float = 0.9
    # Reuse the block's KV for positions outside the current sub-block (dual cache).
    use_dual_cache: bool = True
    DEFAULT_BUFFER_SIZE: ClassVar[int] = 4  # sub-blocks per block: 32 = 4 x 8

    @property
    def sub_block_size(self) -> int:
        return self.block_size // self.buffer_size

    def validate(self) -> None:
        super().validate()
        check_range("strategy.accept_threshold", self.accept_threshold, 0.0, 1.0)
        if self.buffer_size < 2 or self.block_size % self.buffer_size:
            raise config_error("strategy.buffer_size", self.buffer_size,
                               f"a divisor >= 2 of block_size={self.block_size} (sub-blocks per block)",
                               "use buffer_size=4 (sub-blocks of 8 in a block of 32); buffer_size=1 is "
                               "plain block diffusion: use decoding_strategy='multi_bd'")


# DiffusionGemma defaults when neither the user nor generation_config.json sets them.
_GEMMA_DEFAULTS = {"max_denoising_steps": 48, "stability_threshold": 2, "t_min": 0.0, "t_max": 1.0,
                   "confidence_threshold": 0.1, "entropy_bound": 1.0}


@dataclass
class DiffusionGemmaStrategyConfig(StrategyConfig):
    """DiffusionGemma's native canvas denoising; None values come from generation_config.json."""

    name: StrategyName = StrategyName.DIFFUSION_GEMMA
    max_denoising_steps: Optional[int] = None
    # Steps the canvas argmax must stay unchanged before it may commit.
    stability_threshold: Optional[int] = None
    # Sampling temperature schedule bounds over the denoising steps.
    t_min: Optional[float] = None
    t_max: Optional[float] = None
    # Commit when mean entropy over the canvas falls below this.
    confidence_threshold: Optional[float] = None
    # Accept positions while their cumulative entropy stays below this bound.
    entropy_bound: Optional[float] = None
    DEFAULT_BLOCK_SIZE: ClassVar[int] = 256
    DEFAULT_PAGE_SIZE: ClassVar[int] = 256
    FORCED_BUFFER_SIZE: ClassVar[Optional[int]] = 1

    def normalize(self, cfg: "Config", notes: Notes) -> None:
        # The canvas is the checkpoint's (config.json canvas_length; 256 when it declares none):
        # the model was trained to denoise exactly that many positions at once.
        canvas = getattr(cfg.hf_config, "canvas_length", None) or self.DEFAULT_BLOCK_SIZE
        if self.block_size is not None and self.block_size != canvas:
            from .errors import config_error
            raise config_error("strategy.block_size", self.block_size,
                               f"{canvas}, the checkpoint's canvas_length", "leave strategy.block_size unset: "
                               "diffusion_gemma decodes the canvas its checkpoint declares")
        self.block_size = canvas
        why = "diffusion_gemma decodes its native canvas with pages of 256"
        _resolve(cfg.cache, "page_size", 256, "cache.page_size", why, notes, force=True)
        super().normalize(cfg, notes)
        generation = _read_generation_config(cfg.model.path)
        for key, default in _GEMMA_DEFAULTS.items():
            if getattr(self, key) is None:
                setattr(self, key, type(default)(generation.get(key, default)))
        self.validate()

    def validate(self) -> None:
        super().validate()
        if any(getattr(self, key) is None for key in _GEMMA_DEFAULTS):
            return  # not normalized yet
        check_range("strategy.max_denoising_steps", self.max_denoising_steps, 1, None, integer=True)
        check_range("strategy.stability_threshold", self.stability_threshold, 1, None, integer=True)
        check_range("strategy.t_min", self.t_min, 0.0, None)
        check_range("strategy.t_max", self.t_max, self.t_min, None)
        check_range("strategy.confidence_threshold", self.confidence_threshold, 0.0, None)
        check_range("strategy.entropy_bound", self.entropy_bound, 0.0, None)


@dataclass
class VanillaStrategyConfig(StrategyConfig):
    """The original LLaDA loop: no cache, full recompute, fixed steps per block."""

    name: StrategyName = StrategyName.VANILLA
    # Denoising steps per block. None: block_size (one token per step).
    steps_per_block: Optional[int] = None
    remasking: RemaskingKind = RemaskingKind.LOW_CONFIDENCE
    FORCED_BUFFER_SIZE: ClassVar[Optional[int]] = 1
    FORCED_PREFIX_FULL: ClassVar[Optional[bool]] = True  # everything attends to everything
    FORCED_PREFIX_CACHING: ClassVar[Optional[bool]] = False  # no KV cache at all

    def normalize(self, cfg: "Config", notes: Notes) -> None:
        super().normalize(cfg, notes)
        self.remasking = coerce_enum(RemaskingKind, "strategy.remasking", self.remasking)
        _resolve(self, "steps_per_block", self.block_size, "strategy.steps_per_block", "vanilla", notes, False)
        check_range("strategy.steps_per_block", self.steps_per_block, 1, self.block_size, integer=True)


STRATEGY_CONFIGS: dict[StrategyName, type[StrategyConfig]] = {
    StrategyName.MULTI_BD: MultiBDStrategyConfig,
    StrategyName.D2F: D2FStrategyConfig,
    StrategyName.DMAX: DMaxStrategyConfig,
    StrategyName.FAST_DLLM_V2: FastDLLMv2StrategyConfig,
    StrategyName.DIFFUSION_GEMMA: DiffusionGemmaStrategyConfig,
    StrategyName.VANILLA: VanillaStrategyConfig,
}


def _read_generation_config(path: str) -> dict:
    """Flattened generation_config.json of a checkpoint ({} when absent)."""
    file = os.path.join(path, "generation_config.json")
    if not os.path.isfile(file):
        return {}
    with open(file) as f:
        data = json.load(f)
    flat = dict(data)
    for nested in ("sampler_config", "diffusion_config"):
        if isinstance(data.get(nested), dict):
            flat.update(data[nested])
    return flat
