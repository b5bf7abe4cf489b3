"""What a step decides: token choice and confidence, then which positions change.

Importing this package registers the built-in samplers (``AutoSampler``). The public helpers a
custom sampler is written with (docs/strategies.md, "A custom sampler"): ``Sampler`` and
``Decision``; ``rows_on`` (the batch's row / block tensors on the logits' device); ``select_tokens``
(token and confidence per row, honouring each request's temperature / top-k / top-p);
``accept_masks`` (threshold acceptance with forced blocks); ``top_quota`` (the k best rows per
block); ``fills_per_request`` (the step's one host transfer, grouped into per-request fills).
"""

from ..engine.batch import rows_on
from . import diffusion_gemma, dmax, edit, fast_dllm_v2, naive, quota  # noqa: F401  (registers)
from .accept import accept_masks
from .base import Decision, Sampler, fills_per_request
from .quota import top_quota
from .select import SelectionParams, select_tokens

__all__ = ["Decision", "Sampler", "SelectionParams", "accept_masks", "fills_per_request", "rows_on",
           "select_tokens", "top_quota"]
