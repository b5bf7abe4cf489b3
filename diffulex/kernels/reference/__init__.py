"""Plain-PyTorch references of every kernel: the CPU path and the tests' oracle."""

from diffulex.kernels.reference.activation import silu_and_mul
from diffulex.kernels.reference.fp8_linear import fp8_linear
from diffulex.kernels.reference.fused_moe import fused_moe
from diffulex.kernels.reference.greedy_confidence import greedy_confidence
from diffulex.kernels.reference.moe_router import group_limited_topk, moe_route
from diffulex.kernels.reference.norm import rms_norm
from diffulex.kernels.reference.paged_attention import paged_attention, store_kvcache
from diffulex.kernels.reference.rotary import qk_norm_rope

__all__ = ["fp8_linear", "fused_moe", "greedy_confidence", "group_limited_topk", "moe_route", "paged_attention", "qk_norm_rope", "rms_norm",
           "silu_and_mul", "store_kvcache"]
