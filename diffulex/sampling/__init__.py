"""What a step decides: token choice and confidence, then which positions change.

Importing this package registers the built-in samplers (``AutoSampler``).
"""

from . import diffusion_gemma, dmax, edit, fast_dllm_v2, naive, quota  # noqa: F401  (registers)
from .accept import accept_masks
from .base import Decision, Sampler
from .select import SelectionParams, select_tokens

__all__ = ["Decision", "Sampler", "SelectionParams", "accept_masks", "select_tokens"]
