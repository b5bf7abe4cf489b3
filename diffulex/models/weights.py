"""Reading checkpoint tensors from safetensors shards and routing them into parameters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open
from torch import nn

INDEX_FILE = "model.safetensors.index.json"


def checkpoint_files(path: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint directory (via the index when present)."""
    root = Path(path)
    if root.is_file():
        return [root]
    index = root / INDEX_FILE
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        outside = sorted({n for n in weight_map.values()
                          if Path(n).is_absolute() or not (root / n).resolve().is_relative_to(root.resolve())})
        if outside:
            raise ValueError(f"{index} names shards outside the checkpoint folder: {outside}; a shard must be a "
                             "file inside the folder (no absolute path, no '..')")
        files = [root / name for name in sorted(set(weight_map.values()))]
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise FileNotFoundError(f"{index} names shards that do not exist: {missing}")
        return files
    files = sorted(root.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files (and no {INDEX_FILE}) in {root}")
    return files


def iter_checkpoint(path: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` for every tensor of every shard, one shard open at a time.

    An FP8 checkpoint (config.json ``quantization_config.quant_method == "fp8"``) is read
    dequantized: each FP8 ``X.weight`` and its ``X.weight_scale_inv`` / ``X.weight_scale`` come
    out as one float32 ``X.weight`` (:mod:`diffulex.quantization.checkpoint`), so the families'
    name mappings and LoRA merging see a full-precision checkpoint's names.
    """
    root = Path(path)
    quant = None
    if root.is_dir():
        from diffulex.config.quantization import checkpoint_quantization

        quant = checkpoint_quantization(root)
    if quant is not None and quant.method == "fp8":
        from diffulex.quantization.checkpoint import dequantized

        yield from dequantized(_iter_raw(root), quant.block)
        return
    for name, tensor in _iter_raw(root):
        if tensor.dtype == torch.float8_e4m3fn:
            raise ValueError(f"checkpoint tensor {name!r} is float8_e4m3fn but {root / 'config.json'} declares no "
                             "FP8 format; add quantization_config = {\"quant_method\": \"fp8\", "
                             "\"weight_block_size\": [bn, bk]} (the tiles of its weight_scale_inv tensors)")
        yield name, tensor


def _iter_raw(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of every shard as stored."""
    for file in checkpoint_files(path):
        try:
            handle = safe_open(str(file), framework="pt")
        except Exception as err:  # safetensors raises its own error type, naming no file
            raise ValueError(f"cannot read checkpoint shard {file}: {err} (a truncated or corrupted "
                             "file: download or copy it again)") from err
        with handle as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def load_into(param: nn.Parameter, tensor: torch.Tensor, shard_id, ckpt_name: str) -> None:
    """Run the parameter's ``weight_loader``, naming the checkpoint tensor in any error."""
    loader = getattr(param, "weight_loader", None)
    if loader is None:
        raise ValueError(f"parameter for checkpoint tensor {ckpt_name!r} has no weight_loader")
    try:
        loader(param, tensor, shard_id)
    except ValueError as err:
        raise ValueError(f"checkpoint tensor {ckpt_name!r}: {err}") from None
