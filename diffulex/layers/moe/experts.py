"""Routed experts as stacked weights, computed one expert at a time over all its tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from diffulex.kernels.reference.fused_moe import expert_activation, expert_weight
from diffulex.layers.linear import copy_checked
from diffulex.layers.parallel import TPGroup
from diffulex.quantization.fp8 import FP8_DTYPE, quantize_fp8


class StackedExperts(nn.Module):
    """``num_experts`` gated MLPs held as ``w13: [E_local, 2I, H]`` (gate | up) and ``w2: [E_local, H, I]``.

    With tensor and/or expert parallelism whole experts are sharded over the ``ep x tp``
    ranks of a replica: shard ``s = ep.rank * tp.size + tp.rank`` owns experts
    ``[s * E_local, (s + 1) * E_local)``; every rank routes all tokens, computes its own
    experts and the partial sums are all-reduced over the tensor group, then over the
    expert group (attention and dense layers are replicated across the expert group).

    ``weight_loader(param, loaded, shard_id=(expert_id, "gate" | "up" | "down"))`` takes one
    expert's full checkpoint matrix; experts owned by another rank are skipped.

    ``kernels`` (set by the model runner): ``"torch"`` runs the loop below (one host sync per
    layer); ``"triton"`` runs the fused grouped-GEMM MoE, which reads each selected expert
    once per step and never syncs with the host. ``activation`` names the gate activation
    (``"silu"``; DiffusionGemma's subclass ``"gelu_tanh"``); both paths honour it.

    :meth:`quantize_weights` (after loading) turns the stacks into FP8 (e4m3) with one float32
    scale per ``block`` tile of each expert matrix: ``w13_scale_inv [E_local + extra, ceil(2I/bn),
    ceil(H/bk)]``, ``w2_scale_inv [E_local + extra, ceil(H/bn), ceil(I/bk)]``; both paths then read
    the FP8 values (the fused MoE widens them in registers, the loop dequantizes each expert).
    """

    uses_kernels = True
    activation = "silu"  # the gate activation: "silu" or "gelu_tanh" (subclasses)

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int,
                 tp: TPGroup = TPGroup(), dtype: torch.dtype = torch.float32, ep: TPGroup = TPGroup(),
                 extra_slots: int = 0) -> None:
        super().__init__()
        self.tp = tp
        self.ep = ep
        self.num_experts = num_experts
        shards = tp.size * ep.size
        if num_experts % shards:
            raise ValueError(f"num_experts={num_experts} is not divisible by tensor-parallel size {tp.size} x "
                             f"expert-parallel size {ep.size}; pick sizes whose product divides it")
        self.num_local = num_experts // shards
        self.expert_start = (ep.rank * tp.size + tp.rank) * self.num_local
        self.intermediate_size = intermediate_size
        self.kernels = "torch"
        # ``extra_slots`` experts more in the same storage, after the routed ones: a model may
        # place an always-used expert there (LLaDA2's shared expert, see :meth:`slot`), and the
        # fused MoE then runs it with the routed ones (``forward(..., extra=True)``, the ids
        # and weights already carrying the extra columns: ``router(x, extra_slots=...)``).
        self.extra_slots = extra_slots
        n = self.num_local + extra_slots
        self.w13_all = torch.empty(n, 2 * intermediate_size, hidden_size, dtype=dtype)  # [E_local + extra, 2I, H]
        self.w2_all = torch.empty(n, hidden_size, intermediate_size, dtype=dtype)  # [E_local + extra, H, I]
        self.w13 = nn.Parameter(self.w13_all[:self.num_local], requires_grad=False)
        self.w2 = nn.Parameter(self.w2_all[:self.num_local], requires_grad=False)
        self.w13.weight_loader = self.weight_loader
        self.w2.weight_loader = self.weight_loader
        self.weight_block: tuple[int, int] | None = None  # FP8 scale tile once quantized
        self.w13_scale_all = self.w2_scale_all = None
        self.w13_scale_inv = self.w2_scale_inv = None

    @property
    def is_fp8(self) -> bool:
        return self.weight_block is not None

    @torch.no_grad()
    def quantize_weights(self, block: tuple[int, int]) -> None:
        """Replace the loaded stacks (extra slots included) by FP8 values and per-tile scales; idempotent.

        Quantized expert by expert (the float32 work buffer of one expert at a time, not of
        the whole stack). The parameters ``w13`` / ``w2`` / ``*_scale_inv`` stay views of the
        stacked storage, so :meth:`slot` gives the extra slots' FP8 views and scales.
        """
        if self.is_fp8:
            return
        if self.w13.data_ptr() != self.w13_all.data_ptr() or self.w2.data_ptr() != self.w2_all.data_ptr():
            raise ValueError("StackedExperts.quantize_weights: the parameters are no longer views of the stacked "
                             "storage (the module was moved with .to() or its .data replaced); build the module "
                             "on its device (with torch.device(...)) and copy weights into w13 / w2 in place")
        block = (int(block[0]), int(block[1]))
        stacks = []
        for w in (self.w13_all, self.w2_all):
            q = torch.empty(w.shape, dtype=FP8_DTYPE, device=w.device)
            scales = []
            for e in range(w.shape[0]):
                q[e], s = quantize_fp8(w[e], block)
                scales.append(s)
            stacks.append((q, torch.stack(scales) if scales else torch.empty(0, device=w.device)))
        (self.w13_all, self.w13_scale_all), (self.w2_all, self.w2_scale_all) = stacks
        n = self.num_local
        for name, full in (("w13", self.w13_all), ("w2", self.w2_all),
                           ("w13_scale_inv", self.w13_scale_all), ("w2_scale_inv", self.w2_scale_all)):
            old = getattr(self, name)
            setattr(self, name, nn.Parameter(full[:n], requires_grad=False))
            if old is not None:
                getattr(self, name).__dict__.update(old.__dict__)  # weight_loader and the like
        self.weight_block = block

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id=None) -> None:
        expert_id, part = shard_id
        if not 0 <= expert_id < self.num_experts:
            raise ValueError(f"expert id {expert_id} out of range [0, {self.num_experts})")
        local = expert_id - self.expert_start
        if not 0 <= local < self.num_local:
            return
        i = self.intermediate_size
        if part == "gate":
            dst = param.data[local, :i]
        elif part == "up":
            dst = param.data[local, i:]
        elif part == "down":
            dst = param.data[local]
        else:
            raise ValueError(f"StackedExperts: part {part!r}, expected 'gate', 'up' or 'down'")
        with torch.no_grad():
            copy_checked(dst, loaded_weight)

    def slot(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Extra slot ``i``: views ``(gate|up [2I, H], down [H, I])`` of the stacked storage."""
        if not 0 <= i < self.extra_slots:
            raise ValueError(f"StackedExperts: extra slot {i} out of range [0, {self.extra_slots})")
        return self.w13_all[self.num_local + i], self.w2_all[self.num_local + i]

    def slot_scales(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Extra slot ``i``'s FP8 scales ``(gate|up, down)``, views of the stacked scales (FP8 only)."""
        if not self.is_fp8:
            raise ValueError("StackedExperts: slot_scales() of experts that are not FP8")
        if not 0 <= i < self.extra_slots:
            raise ValueError(f"StackedExperts: extra slot {i} out of range [0, {self.extra_slots})")
        return self.w13_scale_all[self.num_local + i], self.w2_scale_all[self.num_local + i]

    def forward(self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor,
                extra: bool = False) -> torch.Tensor:
        # x: [T, H]; topk_ids, topk_weights: [T, k] -> [T, H]. ``extra`` (fused path, one shard):
        # the last ``extra_slots`` columns name the extra slots (ids E.., weight 1; the router
        # appends them) and the caller skips its own copy of that expert.
        if extra and self.extra_slots and self.tp.size * self.ep.size != 1:
            raise ValueError("StackedExperts: extra slots are used only without tensor/expert sharding")
        if self.kernels != "torch" and type(self).forward is StackedExperts.forward:
            from diffulex.kernels import get_ops

            w13, w2, num_experts = self.w13, self.w2, self.num_experts
            s13, s2 = self.w13_scale_inv, self.w2_scale_inv
            if extra and self.extra_slots:
                w13, w2, num_experts = self.w13_all, self.w2_all, self.num_experts + self.extra_slots
                s13, s2 = self.w13_scale_all, self.w2_scale_all
            fp8 = {"w13_scale": s13, "w2_scale": s2, "block": self.weight_block} if self.is_fp8 else {}
            y = get_ops(x.device, self.kernels).fused_moe(
                x.contiguous(), topk_ids, topk_weights, w13, w2, self.expert_start, num_experts,
                activation=self.activation, **fp8)
            if self.tp.size * self.ep.size == 1:
                return y
            return self.ep.all_reduce(self.tp.all_reduce(y.float())).to(x.dtype)
        act = expert_activation(self.activation)
        w13, w2, n_loop = self.w13, self.w2, self.num_local
        s13, s2 = self.w13_scale_inv, self.w2_scale_inv
        if extra and self.extra_slots:  # ids E.. name the extra slots (one shard only)
            w13, w2, n_loop = self.w13_all, self.w2_all, self.num_local + self.extra_slots
            s13, s2 = self.w13_scale_all, self.w2_scale_all
        k = topk_ids.shape[1]
        flat_ids = topk_ids.flatten()  # [T*k]
        order = flat_ids.argsort(stable=True)  # [T*k], grouped by expert
        token_of = order // k  # [T*k] token of each sorted assignment
        weight_of = topk_weights.flatten()[order].float()  # [T*k]
        counts = torch.bincount(flat_ids, minlength=self.num_experts).tolist()  # one host sync per layer
        out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)  # [T, H]
        start = sum(counts[: self.expert_start])
        for local in range(n_loop):
            n = counts[self.expert_start + local]
            if n == 0:
                continue
            rows = slice(start, start + n)
            start += n
            tokens = token_of[rows]  # [n]
            h = F.linear(x[tokens], expert_weight(w13, s13, self.weight_block, local, x.dtype))  # [n, 2I]
            gate, up = h.chunk(2, dim=-1)
            y = F.linear(act(gate) * up, expert_weight(w2, s2, self.weight_block, local, x.dtype))  # [n, H]
            out.index_add_(0, tokens, y.float() * weight_of[rows, None])
        return self.ep.all_reduce(self.tp.all_reduce(out)).to(x.dtype)
