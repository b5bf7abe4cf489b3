"""Write tiny checkpoints (config, configuration module, tokenizer, safetensors) to disk."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from diffulex.tiny.hf_configs import REMOTE_CONFIGS, config_module_source
from diffulex.tiny.recipes import TINY_FAMILIES, TOKENIZERS, config_json, generation_config_json
from diffulex.tiny.sizes import DEFAULT_SIZE, TinySize
from diffulex.tiny.tokenizer import TokenizerSpec, write_tokenizer
from diffulex.tiny.weights import family_generator, init_tensors, tensor_specs

SHARDED_FAMILIES = {"llada2": 2}  # family -> number of shards (real checkpoints are sharded)
_DEFAULT_ROOT = Path("~/.cache/diffulex/tiny/v1")


def _check_family(family: str) -> None:
    if family not in TINY_FAMILIES:
        raise ValueError(f"unknown tiny family {family!r}; known families: {', '.join(TINY_FAMILIES)}")


def _dump_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _save_weights(tensors: dict[str, torch.Tensor], out_dir: Path, num_shards: int) -> None:
    """Save ``tensors`` as one model.safetensors, or as ``num_shards`` shards plus an index."""
    meta = {"format": "pt"}
    if num_shards <= 1:
        save_file(tensors, str(out_dir / "model.safetensors"), metadata=meta)
        return
    names = list(tensors)  # spec order: embeddings, layer 0, layer 1, ..., head
    sizes = [tensors[n].numel() * tensors[n].element_size() for n in names]
    total, target = sum(sizes), sum(sizes) / num_shards
    shards: list[list[str]] = [[]]
    acc = 0
    for name, size in zip(names, sizes):
        # Start a new shard once the current one reached its share (keep the last open).
        if acc >= target * len(shards) and len(shards) < num_shards:
            shards.append([])
        shards[-1].append(name)
        acc += size
    weight_map = {}
    for k, shard in enumerate(shards, start=1):
        fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: tensors[n] for n in shard}, str(out_dir / fname), metadata=meta)
        weight_map.update({n: fname for n in shard})
    _dump_json(out_dir / "model.safetensors.index.json",
               {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))})


def write_tiny_checkpoint(family: str, out_dir, seed: int = 0) -> Path:
    """Write a deterministic tiny checkpoint of ``family`` into ``out_dir`` and return its path.

    The directory mirrors the published checkpoint's layout: config.json (real field
    names), the configuration module referenced by ``auto_map`` (remote-code families),
    generation_config.json where the real one exists, tokenizer files and safetensors
    under the real weight names (llada2 sharded with an index).
    """
    _check_family(family)
    out = Path(out_dir)
    if family == "diffusion_gemma":
        from diffulex.tiny.gemma import write_diffusion_gemma

        out.mkdir(parents=True, exist_ok=True)
        write_tokenizer(TOKENIZERS[family], out)
        write_diffusion_gemma(out, seed)
        return out
    vocab = config_json(family)["vocab_size"]
    tensors = init_tensors(tensor_specs(family, vocab), family_generator(family, seed))
    return write_checkpoint(family, out, tensors)


def write_checkpoint(family: str, out_dir, tensors: dict[str, torch.Tensor], size: TinySize = DEFAULT_SIZE,
                     tok: TokenizerSpec | None = None) -> Path:
    """Write ``tensors`` (real checkpoint names) as a ``family`` checkpoint of ``size`` with tokenizer
    ``tok`` (default: the family's): config.json, its configuration module, generation_config.json
    where the real checkpoint has one, tokenizer files, safetensors (sharded like the real one)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = tok or TOKENIZERS[family]
    write_tokenizer(tok, out)
    _dump_json(out / "config.json", config_json(family, size, tok))
    (out / f"{REMOTE_CONFIGS[family].module}.py").write_text(config_module_source(family))
    generation = generation_config_json(family, tok)
    if generation is not None:
        _dump_json(out / "generation_config.json", generation)
    _save_weights(tensors, out, SHARDED_FAMILIES.get(family, 1))
    return out


def default_root() -> Path:
    """Cache root: ``$DIFFULEX_TINY_ROOT`` or ``~/.cache/diffulex/tiny/v1``."""
    env = os.environ.get("DIFFULEX_TINY_ROOT")
    return Path(env).expanduser() if env else _DEFAULT_ROOT.expanduser()


def ensure_tiny_checkpoint(family: str, root=None, trained: bool = False) -> Path:
    """Return ``root/<family>``, writing it (seed 0) the first time; with ``trained=True`` the
    shipped trained checkpoint of ``family`` (``diffulex/tiny/trained/``, read in place).

    Writes into a temporary sibling directory and renames it into place, so a
    concurrent process either sees no directory or a complete one; the loser of a
    rename race discards its copy.
    """
    _check_family(family)
    if trained:
        from diffulex.tiny.shipped import trained_checkpoint

        return trained_checkpoint(family)
    root = Path(root).expanduser() if root is not None else default_root()
    target = root / family
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{family}.tmp-", dir=root))
    try:
        write_tiny_checkpoint(family, tmp, seed=0)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise  # not a lost race: a real failure
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
