"""Plain-PyTorch references of every kernel: the CPU path and the tests' oracle."""

from diffulex.kernels.reference.paged_attention import paged_attention, store_kvcache

__all__ = ["paged_attention", "store_kvcache"]
