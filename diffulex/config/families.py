"""Model names, the families they belong to, and what each family supports.

A *family* is an architecture with one weight layout (``llada2``, ``llada``, ...);
a *model name* is what users write (``llada2_mini``, ``dream_7b``, ...). Several names
map onto one family. This table is pure data: the model classes themselves register in
``diffulex.models`` under the family name.
"""

from __future__ import annotations

from dataclasses import dataclass

from .enums import StrategyName


@dataclass(frozen=True)
class FamilyTraits:
    """What the engine needs to know about a family before loading weights."""

    native_strategy: StrategyName  # used when the user does not pick one
    strategies: frozenset[StrategyName]  # strategies that make sense for it
    shift: bool  # logits at i-1 predict token i (AR-initialized models)
    edit_capable: bool = False  # trained for token-to-token editing (LLaDA2.x, DMax)
    moe: bool = False
    # The decoding loop never uses a mask token (a canvas of random tokens): a tokenizer without one is fine.
    mask_free: bool = False
    # multi_bd follows the official loop's step counts when max_tokens is below the block size
    # (strategy.pipelined.official_fill_schedule; LLaDA2.0's generate).
    short_generation_schedule: bool = False


_BLOCKWISE = frozenset({StrategyName.MULTI_BD, StrategyName.D2F, StrategyName.VANILLA})

FAMILIES: dict[str, FamilyTraits] = {
    "llada2": FamilyTraits(StrategyName.MULTI_BD, _BLOCKWISE | {StrategyName.DMAX},
                           shift=False, edit_capable=True, moe=True, short_generation_schedule=True),
    "llada": FamilyTraits(StrategyName.D2F, _BLOCKWISE, shift=False),
    "dream": FamilyTraits(StrategyName.D2F, _BLOCKWISE, shift=True),
    "sdar": FamilyTraits(StrategyName.MULTI_BD, _BLOCKWISE, shift=False),
    "sdar_moe": FamilyTraits(StrategyName.MULTI_BD, _BLOCKWISE, shift=False, moe=True),
    "fast_dllm_v2": FamilyTraits(StrategyName.FAST_DLLM_V2, _BLOCKWISE | {StrategyName.FAST_DLLM_V2},
                                 shift=True),
    "diffusion_gemma": FamilyTraits(StrategyName.DIFFUSION_GEMMA,
                                    frozenset({StrategyName.DIFFUSION_GEMMA}), shift=False, moe=True,
                                    mask_free=True),
}

# Every accepted model name -> its family. Family names are model names too.
MODEL_NAMES: dict[str, str] = {name: name for name in FAMILIES}
MODEL_NAMES.update({
    "llada2_moe": "llada2", "llada2_mini": "llada2", "llada2_flash": "llada2",
    "llada2dot1_mini": "llada2", "llada2dot1_flash": "llada2", "llada2_mini_dmax": "llada2",
    "llada_8b": "llada", "llada_8b_instruct": "llada", "llada_8b_base": "llada",
    "dream_7b": "dream", "diffucoder": "dream", "diffucoder_7b": "dream",
    "sdar_1.7b": "sdar", "sdar_4b": "sdar", "sdar_8b": "sdar", "sdar_30b_a3b": "sdar_moe",
    "fast_dllm_v2_1.5b": "fast_dllm_v2", "fast_dllm_v2_7b": "fast_dllm_v2",
})

# Names whose checkpoints were trained for editing and must decode in edit mode.
EDIT_ONLY_NAMES = frozenset({"llada2dot1_mini", "llada2dot1_flash", "llada2_mini_dmax"})


def family_of(model_name: str) -> str | None:
    """The family of a model name, or None when the name is unknown."""
    return MODEL_NAMES.get(model_name)
