"""Write an FP8 (e4m3, block-scaled) copy of a checkpoint in the Hugging Face format.

    python -m diffulex.quantization.convert --src DIR --dst DIR [--block 128 128] [--ignore PAT ...]

Every checkpoint tensor ``X.weight`` that loads into a module Diffulex can quantize (one with
``quantize_weights``: the linear layers, and experts where supported) becomes ``X.weight``
float8_e4m3fn plus ``X.weight_scale_inv`` float32 (one scale per ``--block`` tile), unless a
full-precision pattern names it (lm_head, embeddings, MoE routers / gates, ``--ignore``, the
source's ``modules_to_not_convert``). config.json gains ``quantization_config = {"quant_method":
"fp8", "activation_scheme": "dynamic", "fmt": "e4m3", "weight_block_size": [bn, bk],
"modules_to_not_convert": [...]}``; tokenizer, generation config and code files are copied. A
block entry 0 means the whole dimension (``--block 1 0``: one scale per output channel); it is
written as the largest such dimension, so the file's tiles stay HF-readable. An FP8 source is
dequantized first (requantized in the new tiles). Which tensors qualify comes from the family's
own name mapping, built on the meta device (no weights are materialized).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Iterable, Optional

import torch

from diffulex.config.quantization import (ALWAYS_FULL_PRECISION, checkpoint_quantization, matches_module,
                                          parse_block)
from diffulex.quantization.fp8 import quantize_fp8

SHARD_BYTES = 4 << 30  # output shard size (before the last tensor that crosses it)


def _model_on_meta(src: Path, trust_remote_code: bool) -> Any:
    """The family's model for ``src`` on the meta device (its layout and module names only)."""
    import diffulex.models  # noqa: F401  (registers the families)
    from diffulex.config.checkpoint import load_hf_config, read_checkpoint_facts
    from diffulex.registry import AutoModel

    hf_config = load_hf_config(src, trust_remote_code)
    family = read_checkpoint_facts(src, hf_config).family
    if family is None:
        raise ValueError(f"{src}: model_type {hf_config.model_type!r} is not a family Diffulex implements; "
                         "only checkpoints Diffulex can run are converted")
    with torch.device("meta"):
        return AutoModel.get(family)(hf_config, dtype=torch.bfloat16)


def fp8_plan(model: Any, names: Iterable[str], patterns: Iterable[str]) -> set[str]:
    """The checkpoint tensors among ``names`` to store in FP8: ``X.weight`` loading into a module with
    ``quantize_weights`` that no pattern names (by its name or the checkpoint's)."""
    from diffulex.quantization.apply import _clean

    required, optional = model.checkpoint_layout()
    aliases = getattr(model, "checkpoint_aliases", {})
    modules = {_clean(n): m for n, m in model.named_modules()}
    patterns = list(patterns)
    quantize: set[str] = set()
    for name in names:
        if not name.endswith(".weight"):
            continue
        canon = name
        for old, new in aliases.items():
            canon = canon.replace(old, new)
        target = required.get(canon) or optional.get(canon)
        if target is None:
            continue
        mod_name = target[0].rpartition(".")[0]
        module = modules.get(mod_name)
        if module is None or not callable(getattr(module, "quantize_weights", None)):
            continue
        if any(matches_module(n, p) for p in patterns for n in (mod_name, name.rpartition(".")[0])):
            continue
        quantize.add(name)
    return quantize


def convert(src: str | Path, dst: str | Path, block: Iterable[int] = (128, 128), ignore: Iterable[str] = (),
            trust_remote_code: bool = True, shard_bytes: int = SHARD_BYTES) -> dict:
    """Write the FP8 checkpoint of ``src`` to ``dst`` (a new or empty directory); its quantization_config."""
    from safetensors.torch import save_file

    from diffulex.lora.adapter import checkpoint_tensor_names
    from diffulex.models.weights import INDEX_FILE, iter_checkpoint
    from diffulex.quantization.checkpoint import scale_partner

    src, dst = Path(src).expanduser().resolve(), Path(dst).expanduser().resolve()
    bn, bk = parse_block("--block", list(block), allow_zero=True)
    if not (src / "config.json").is_file():
        raise ValueError(f"--src {src}: no config.json; point it at a checkpoint directory")
    if dst == src or (dst.exists() and any(dst.iterdir())):
        raise ValueError(f"--dst {dst}: must be a new or empty directory (not the source)")
    source_quant = checkpoint_quantization(src)
    patterns = [*ALWAYS_FULL_PRECISION, *ignore, *source_quant.not_converted]
    model = _model_on_meta(src, trust_remote_code)
    names = [n for n in checkpoint_tensor_names(src) if scale_partner(n) is None and not n.endswith(".input_scale")]
    quantize = fp8_plan(model, names, patterns)
    dst.mkdir(parents=True, exist_ok=True)

    shards: list[list[str]] = []
    pending: dict[str, torch.Tensor] = {}
    size = 0
    kept: list[str] = []
    dims = [1, 1]
    tmp_names: list[str] = []

    def flush() -> None:
        nonlocal pending, size
        if pending:
            name = f"part-{len(tmp_names):05d}.safetensors.tmp"
            save_file(pending, str(dst / name), metadata={"format": "pt"})
            tmp_names.append(name)
            shards.append(list(pending))
        pending, size = {}, 0

    def add(name: str, tensor: torch.Tensor) -> None:
        nonlocal size
        pending[name] = tensor.contiguous()
        size += tensor.numel() * tensor.element_size()

    # First pass over shapes: a 0 block entry becomes the largest dimension of the quantized tensors.
    if not (bn and bk):
        from safetensors import safe_open

        from diffulex.models.weights import checkpoint_files

        for file in checkpoint_files(src):
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():
                    if name in quantize:
                        shape = f.get_slice(name).get_shape()
                        dims = [max(dims[0], shape[-2]), max(dims[1], shape[-1])]
    tile = (bn or dims[0], bk or dims[1])
    for name, tensor in iter_checkpoint(src):
        if name in quantize and tensor.is_floating_point() and tensor.dim() >= 2:
            q, scale = quantize_fp8(tensor, tile)
            add(name, q)
            add(name + "_scale_inv", scale)
        else:
            if name.endswith(".weight") and tensor.is_floating_point() and tensor.dim() >= 2:
                kept.append(name.rpartition(".")[0])
            add(name, tensor)
        if size >= shard_bytes:
            flush()
    flush()

    total = len(tmp_names)
    final = ["model.safetensors"] if total == 1 else [f"model-{i + 1:05d}-of-{total:05d}.safetensors"
                                                      for i in range(total)]
    for tmp, name in zip(tmp_names, final):
        (dst / tmp).rename(dst / name)
    if total > 1:
        weight_map = {t: f for f, names_ in zip(final, shards) for t in names_}
        (dst / INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2) + "\n")

    for item in src.iterdir():
        if item.name in ("config.json", INDEX_FILE) or item.suffix == ".safetensors" or item.name.startswith("."):
            continue
        if item.is_file():
            shutil.copy2(item, dst / item.name)
    config = json.loads((src / "config.json").read_text())
    qc = {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3", "weight_block_size": list(tile),
          "modules_to_not_convert": sorted(dict.fromkeys(kept))}
    config["quantization_config"] = qc
    (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return qc


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffulex.quantization.convert",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", required=True, help="checkpoint directory to read (bf16 / fp32 / FP8)")
    parser.add_argument("--dst", required=True, help="new (or empty) directory to write the FP8 checkpoint to")
    parser.add_argument("--block", type=int, nargs=2, default=[128, 128], metavar=("BN", "BK"),
                        help="scale tile [block_n, block_k]; 0 = the whole dimension (default: 128 128)")
    parser.add_argument("--ignore", nargs="*", default=[], metavar="PATTERN",
                        help="module-name patterns kept in full precision (besides lm_head, embeddings, routers)")
    parser.add_argument("--no-trust-remote-code", action="store_true",
                        help="never run the checkpoint's own configuration code")
    args = parser.parse_args(argv)
    try:
        qc = convert(args.src, args.dst, args.block, args.ignore, trust_remote_code=not args.no_trust_remote_code)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.dst}: weight_block_size {qc['weight_block_size']}, "
          f"{len(qc['modules_to_not_convert'])} module(s) kept in full precision")
    return 0


if __name__ == "__main__":
    sys.exit(main())
