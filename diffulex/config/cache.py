"""The ``cache`` config group: paged KV cache and prefix caching."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .enums import DType
from .errors import check_range, coerce_enum, config_error, is_power_of_two


@dataclass
class CacheConfig:
    """KV pages, their size and how many; prefix reuse across requests."""

    # Tokens per KV page. None: the strategy's default (32; 256 for diffusion_gemma).
    page_size: Optional[int] = None
    # Reuse KV pages of identical full-page prefixes. None: the strategy decides
    # (on for block-causal strategies, off for d2f whose prompt attends bidirectionally).
    enable_prefix_caching: Optional[bool] = None
    # Number of KV pages; -1 sizes the cache from the memory budget below.
    num_pages: int = -1
    # Fraction of GPU memory the engine may use (weights + activations + KV).
    gpu_memory_utilization: float = 0.9
    # KV memory budget on CPU, in GiB.
    cpu_kv_cache_gib: float = 1.0
    # KV dtype. auto: the model's dtype.
    kv_cache_dtype: DType = DType.AUTO

    def validate(self) -> None:
        if self.page_size is not None and not (is_power_of_two(self.page_size) and 4 <= self.page_size <= 1024):
            raise config_error("cache.page_size", self.page_size, "a power of two in [4, 1024]",
                               "use 32 (the default) or 256 for diffusion_gemma")
        if not (self.num_pages == -1 or (isinstance(self.num_pages, int) and self.num_pages > 0)):
            raise config_error("cache.num_pages", self.num_pages, "-1 (auto) or a positive int",
                               "leave num_pages at -1 unless you need a fixed cache size")
        check_range("cache.gpu_memory_utilization", self.gpu_memory_utilization, 0.05, 1.0)
        check_range("cache.cpu_kv_cache_gib", self.cpu_kv_cache_gib, 0.001, None)
        self.kv_cache_dtype = coerce_enum(DType, "cache.kv_cache_dtype", self.kv_cache_dtype)
