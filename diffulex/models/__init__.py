"""Model families. Importing this package registers every family with ``AutoModel``."""

from diffulex.models import diffusion_gemma, dream, fast_dllm_v2, llada, llada2, sdar, sdar_moe  # noqa: F401
