"""Triton kernels for CUDA, one file per op; each mirrors a plain-PyTorch op in ``kernels/reference``.

Nothing here is imported unless :func:`diffulex.kernels.get_ops` picks the Triton backend
(or a test imports it), so CPU-only use never loads Triton. With ``TRITON_INTERPRET=1``
set before Triton is imported, every kernel also runs on CPU tensors (slowly): that is how
the CPU tests check them.
"""

from diffulex.kernels.triton.activation import silu_and_mul
from diffulex.kernels.triton.fp8_linear import fp8_linear
from diffulex.kernels.triton.fused_moe import fused_moe
from diffulex.kernels.triton.greedy_confidence import greedy_confidence
from diffulex.kernels.triton.moe_router import group_limited_topk, moe_route
from diffulex.kernels.triton.norm import rms_norm
from diffulex.kernels.triton.paged_attention import paged_attention
from diffulex.kernels.triton.rotary import qk_norm_rope
from diffulex.kernels.triton.store_kvcache import store_kvcache

__all__ = ["fp8_linear", "fused_moe", "greedy_confidence", "group_limited_topk", "moe_route", "paged_attention", "qk_norm_rope", "rms_norm",
           "silu_and_mul", "store_kvcache"]
