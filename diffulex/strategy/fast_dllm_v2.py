"""Strategy `fast_dllm_v2`: registers its engine components."""

from .base import register_strategy

register_strategy("fast_dllm_v2")
