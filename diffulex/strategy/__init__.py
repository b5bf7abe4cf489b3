"""Built-in decoding strategies. Importing this package registers their components.

Each strategy lives in its own module and registers its request, scheduler, KV-cache
manager and model-runner classes by decorator (``diffulex.registry``).
"""

from . import d2f, diffusion_gemma, dmax, fast_dllm_v2, multi_bd, vanilla  # noqa: F401
from .base import register_strategy  # noqa: F401
