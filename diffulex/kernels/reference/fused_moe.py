"""Plain-PyTorch routed experts, one token at a time: the oracle of the Triton fused MoE."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffulex.quantization.fp8 import dequantize_fp8


def expert_activation(name: str):
    """The gate activation of a gated expert MLP by name: ``silu`` or ``gelu_tanh``."""
    if name == "silu":
        return F.silu
    if name == "gelu_tanh":
        return lambda g: F.gelu(g, approximate="tanh")
    raise ValueError(f"expert activation {name!r}: expected 'silu' or 'gelu_tanh'")


def expert_weight(w: torch.Tensor, scale: torch.Tensor | None, block: tuple[int, int] | None, e: int,
                  dtype: torch.dtype) -> torch.Tensor:
    """Expert ``e`` of stacked weights ``w [E, N, K]`` in ``dtype`` (dequantized when FP8, i.e. ``scale`` given)."""
    if scale is None:
        return w[e]
    return dequantize_fp8(w[e], scale[e], block, dtype)


def fused_moe(
    x: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    expert_start: int = 0,
    num_experts: int | None = None,
    activation: str = "silu",
    w13_scale: torch.Tensor | None = None,
    w2_scale: torch.Tensor | None = None,
    block: tuple[int, int] | None = None,
) -> torch.Tensor:
    """``x: [T, H]``, ``topk_ids, topk_weights: [T, k]``, ``w13: [E, 2I, H]``, ``w2: [E, H, I]`` -> ``[T, H]``.

    ``out[t] = sum_j w[t, j] * w2[e] @ (act(gate_e x[t]) * up_e x[t])`` for the local experts
    ``e = topk_ids[t, j] - expert_start`` in ``[0, E)``; others add nothing. Matmuls in the
    input dtype, the weighted sum in fp32. ``num_experts`` (global count) is accepted for
    signature parity with the Triton op and not needed here. ``activation``: ``"silu"`` or
    ``"gelu_tanh"`` (DiffusionGemma). FP8 experts: ``w13`` / ``w2`` in float8_e4m3fn with
    ``w13_scale`` / ``w2_scale`` in tiles ``block`` (:mod:`diffulex.quantization.fp8`), each
    used expert dequantized to the input dtype. Slow: reads the ids on the host.
    """
    act = expert_activation(activation)
    del num_experts
    num_local, two_i, _ = w13.shape
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)  # [T, H]
    ids = (topk_ids - expert_start).tolist()
    for t, row in enumerate(ids):
        for j, e in enumerate(row):
            if not 0 <= e < num_local:
                continue
            gate, up = F.linear(x[t], expert_weight(w13, w13_scale, block, e, x.dtype)).chunk(2, dim=-1)  # [I], [I]
            y = F.linear(act(gate) * up, expert_weight(w2, w2_scale, block, e, x.dtype))  # [H]
            out[t] += y.float() * topk_weights[t, j].float()
    return out.to(x.dtype)
