"""Linear layers with tensor-parallel sharding and per-rank checkpoint slicing.

Every weight (and bias) parameter carries a ``weight_loader(param, loaded_weight,
shard_id=None)`` attribute: it takes the FULL checkpoint tensor and copies this rank's
slice into the parameter, raising ValueError on a shape mismatch.

After loading, :meth:`LinearBase.quantize_weights` may turn the local weight into FP8 (e4m3,
one float32 scale per tile of this rank's shard, :mod:`diffulex.quantization.fp8`); the
forward then runs the ``fp8_linear`` op of the layer's kernel backend (``kernels``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

from diffulex.kernels import get_ops
from diffulex.layers.parallel import TPGroup


def copy_checked(dst: torch.Tensor, src: torch.Tensor) -> None:
    """Copy ``src`` into ``dst`` (casting dtype) after checking the shapes agree."""
    if tuple(dst.shape) != tuple(src.shape):
        raise ValueError(f"shape mismatch: parameter slice {tuple(dst.shape)}, checkpoint {tuple(src.shape)}")
    dst.copy_(src)


def narrow_checked(t: torch.Tensor, dim: int, start: int, length: int, full: int) -> torch.Tensor:
    """This rank's slice of a full checkpoint tensor, after checking its size along ``dim``."""
    if t.dim() <= dim or t.shape[dim] != full:
        raise ValueError(f"shape mismatch: checkpoint {tuple(t.shape)}, expected size {full} along dim {dim}")
    return t.narrow(dim, start, length)


def default_weight_loader(param: nn.Parameter, loaded_weight: torch.Tensor, shard_id=None) -> None:
    """Loader of an unsharded parameter: the checkpoint tensor is copied whole."""
    if shard_id is not None:
        raise ValueError(f"unsharded parameter got shard_id {shard_id!r}")
    with torch.no_grad():
        copy_checked(param.data, loaded_weight)


def _quantized_loader(param, loaded_weight, shard_id=None) -> None:
    raise ValueError("this layer's weight is already quantized to FP8; load the checkpoint into a freshly "
                     "built model (quantization runs after loading)")


class LinearBase(nn.Module, ABC):
    """``y = x W^T (+ b)`` with a local weight of shape ``[out_local, in_local]``.

    ``dtype`` is the activation (and full-precision weight) dtype. After
    :meth:`quantize_weights` the weight is float8_e4m3fn with ``weight_scale_inv`` float32
    ``[ceil(out_local / bn), ceil(in_local / bk)]`` and ``quant_block = (bn, bk)``; the
    product runs as ``fp8_linear`` of the ``kernels`` backend (set by the model runner).
    """

    uses_kernels = True
    quant_block: tuple[int, int] | None = None  # (bn, bk) once quantized

    def __init__(self, in_local: int, out_local: int, bias: bool, tp: TPGroup, dtype: torch.dtype) -> None:
        super().__init__()
        self.tp = tp
        self.dtype = dtype
        self.kernels = "torch"
        self.weight = nn.Parameter(torch.empty(out_local, in_local, dtype=dtype), requires_grad=False)
        self.weight.weight_loader = self.weight_loader
        if bias:
            self.bias = nn.Parameter(torch.empty(out_local, dtype=dtype), requires_grad=False)
            self.bias.weight_loader = self.weight_loader
        else:
            self.register_parameter("bias", None)

    @abstractmethod
    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id=None) -> None:
        """Implemented by each subclass."""

    def quantize_weights(self, block: tuple[int, int]) -> None:
        """Replace the loaded local weight by FP8 e4m3 values with one scale per ``block`` tile
        (entries past a dimension cover the whole dimension); idempotent for the same block."""
        from diffulex.quantization.fp8 import quantize_fp8

        n, k = self.weight.shape
        bn, bk = (int(block[0]), int(block[1]))
        if bn < 1 or bk < 1:
            raise ValueError(f"{type(self).__name__}.quantize_weights: block {tuple(block)} needs entries >= 1")
        bn, bk = min(bn, n), min(bk, k)
        if self.quant_block is not None:
            if self.quant_block != (bn, bk):
                raise ValueError(f"{type(self).__name__} is already quantized in blocks {self.quant_block}, "
                                 f"not {(bn, bk)}")
            return
        with torch.no_grad():
            q, scale = quantize_fp8(self.weight.data, (bn, bk))
        self.weight = nn.Parameter(q, requires_grad=False)
        self.weight.weight_loader = _quantized_loader
        self.register_buffer("weight_scale_inv", scale)
        self.quant_block = (bn, bk)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's ``x W^T`` without bias or reduction (unmerged LoRA adds to it before the reduce)."""
        if self.quant_block is None:
            return F.linear(x, self.weight)
        return get_ops(x.device, self.kernels).fp8_linear(x, self.weight, self.weight_scale_inv, self.quant_block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quant_block is None:
            return F.linear(x, self.weight, self.bias)
        return get_ops(x.device, self.kernels).fp8_linear(x, self.weight, self.weight_scale_inv, self.quant_block,
                                                          self.bias)


class ReplicatedLinear(LinearBase):
    """A linear layer every rank holds whole."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 tp: TPGroup = TPGroup(), dtype: torch.dtype = torch.float32) -> None:
        super().__init__(in_features, out_features, bias, tp, dtype)

    def weight_loader(self, param, loaded_weight, shard_id=None) -> None:
        default_weight_loader(param, loaded_weight, shard_id)


class ColumnParallelLinear(LinearBase):
    """Output features split across ranks; each rank returns its slice of ``y``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 tp: TPGroup = TPGroup(), dtype: torch.dtype = torch.float32) -> None:
        super().__init__(in_features, tp.split(out_features, "out_features"), bias, tp, dtype)

    def weight_loader(self, param, loaded_weight, shard_id=None) -> None:
        if shard_id is not None:
            raise ValueError(f"{type(self).__name__} got shard_id {shard_id!r}")
        rows = param.shape[0]
        with torch.no_grad():
            copy_checked(param.data, narrow_checked(loaded_weight, 0, self.tp.rank * rows, rows, rows * self.tp.size))


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel outputs fused along dim 0 (e.g. gate | up).

    ``shard_id`` is the index of the output the checkpoint tensor belongs to; each
    output is split across ranks on its own, so the local layout is
    ``[out0_local | out1_local | ...]``.
    """

    def __init__(self, in_features: int, output_sizes: list[int], bias: bool = False,
                 tp: TPGroup = TPGroup(), dtype: torch.dtype = torch.float32) -> None:
        self.output_sizes = list(output_sizes)
        for size in output_sizes:
            tp.split(size, "output_sizes[i]")
        super().__init__(in_features, sum(output_sizes), bias, tp, dtype)

    def weight_loader(self, param, loaded_weight, shard_id=None) -> None:
        if not isinstance(shard_id, int) or not 0 <= shard_id < len(self.output_sizes):
            raise ValueError(f"MergedColumnParallelLinear: shard_id {shard_id!r}, expected 0..{len(self.output_sizes) - 1}")
        local = [s // self.tp.size for s in self.output_sizes]
        offset = sum(local[:shard_id])
        rows = local[shard_id]
        with torch.no_grad():
            src = narrow_checked(loaded_weight, 0, self.tp.rank * rows, rows, self.output_sizes[shard_id])
            copy_checked(param.data.narrow(0, offset, rows), src)


class QKVParallelLinear(ColumnParallelLinear):
    """Fused q | k | v projection, split by heads across ranks.

    Local output layout: ``[Hq_local * D | Hkv_local * D | Hkv_local * D]``. When there
    are fewer KV heads than ranks, each KV head is replicated on ``size / Hkv`` ranks.
    ``shard_id`` is "q", "k", "v", or None for a checkpoint tensor that already holds the
    fused q | k | v rows of all heads.
    """

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int,
                 bias: bool = False, tp: TPGroup = TPGroup(), dtype: torch.dtype = torch.float32) -> None:
        self.head_dim = head_dim
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.num_heads_local = tp.split(num_heads, "num_attention_heads")
        if num_kv_heads >= tp.size:
            self.num_kv_heads_local = tp.split(num_kv_heads, "num_key_value_heads")
            self.kv_head_start = tp.rank * self.num_kv_heads_local
        else:
            if tp.size % num_kv_heads:
                raise ValueError(f"tp size {tp.size} is neither a divisor nor a multiple of "
                                 f"num_key_value_heads={num_kv_heads}")
            self.num_kv_heads_local = 1
            self.kv_head_start = tp.rank // (tp.size // num_kv_heads)
        out_local = (self.num_heads_local + 2 * self.num_kv_heads_local) * head_dim
        LinearBase.__init__(self, hidden_size, out_local, bias, tp, dtype)

    def weight_loader(self, param, loaded_weight, shard_id=None) -> None:
        d = self.head_dim
        if shard_id is None:
            q_rows, kv_rows = self.num_heads * d, self.num_kv_heads * d
            if loaded_weight.shape[0] != q_rows + 2 * kv_rows:
                raise ValueError(f"shape mismatch: fused qkv has {loaded_weight.shape[0]} rows, "
                                 f"expected {q_rows + 2 * kv_rows}")
            q, k, v = loaded_weight.split([q_rows, kv_rows, kv_rows], dim=0)
            for sid, part in (("q", q), ("k", k), ("v", v)):
                self.weight_loader(param, part, sid)
            return
        hq, hkv = self.num_heads_local, self.num_kv_heads_local
        if shard_id == "q":
            offset, rows, start, full = 0, hq * d, self.tp.rank * hq * d, self.num_heads * d
        elif shard_id == "k":
            offset, rows, start, full = hq * d, hkv * d, self.kv_head_start * d, self.num_kv_heads * d
        elif shard_id == "v":
            offset, rows, start, full = (hq + hkv) * d, hkv * d, self.kv_head_start * d, self.num_kv_heads * d
        else:
            raise ValueError(f"QKVParallelLinear: shard_id {shard_id!r}, expected 'q', 'k', 'v' or None")
        with torch.no_grad():
            copy_checked(param.data.narrow(0, offset, rows), narrow_checked(loaded_weight, 0, start, rows, full))


class RowParallelLinear(LinearBase):
    """Input features split across ranks; partial products are summed (all-reduce).

    The bias is held whole and added once, after the reduction.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 tp: TPGroup = TPGroup(), dtype: torch.dtype = torch.float32) -> None:
        super().__init__(tp.split(in_features, "in_features"), out_features, bias, tp, dtype)

    def weight_loader(self, param, loaded_weight, shard_id=None) -> None:
        if shard_id is not None:
            raise ValueError(f"RowParallelLinear got shard_id {shard_id!r}")
        with torch.no_grad():
            if param.dim() == 1:  # bias: replicated
                copy_checked(param.data, loaded_weight)
                return
            cols = param.shape[1]
            copy_checked(param.data, narrow_checked(loaded_weight, 1, self.tp.rank * cols, cols, cols * self.tp.size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.tp.all_reduce(self.matmul(x))
        return y if self.bias is None else y + self.bias
