"""Write a tiny PEFT LoRA adapter for a tiny (or any local) checkpoint, for tests and demos.

Unlike PEFT's initialisation (``B = 0``), both factors are random so the adapter visibly
changes the model's output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from diffulex.lora.adapter import CONFIG_FILE, PEFT_PREFIX, AdapterConfig, matches_target
from diffulex.models.weights import checkpoint_files


def write_tiny_lora(family: str, base_dir: Optional[str | Path], out_dir: str | Path,
                    target_modules: str | list[str], r: int = 4, alpha: float = 8.0, seed: int = 0, *,
                    use_rslora: bool = False, rank_pattern: Optional[dict[str, int]] = None,
                    alpha_pattern: Optional[dict[str, float]] = None, key_style: str = "peft") -> Path:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` under ``out_dir`` and return it.

    ``base_dir`` None: the tiny checkpoint of ``family``. Every checkpoint module with a 2-D
    ``.weight`` matching ``target_modules`` (PEFT rules) gets ``lora_A: [r, in]`` and
    ``lora_B: [out, r]`` drawn N(0, 0.1). ``key_style``: "peft"
    (``base_model.model.X.lora_A.weight``), "named" (``...lora_A.default.weight``) or "bare"
    (``X.lora_A``, no prefix or suffix).
    """
    if base_dir is None:
        from diffulex.tiny import ensure_tiny_checkpoint

        base_dir = ensure_tiny_checkpoint(family)
    cfg = AdapterConfig(r=r, lora_alpha=float(alpha), target_modules=target_modules, use_rslora=use_rslora,
                        rank_pattern=dict(rank_pattern or {}), alpha_pattern=dict(alpha_pattern or {}))
    shapes: dict[str, tuple[int, ...]] = {}
    for file in checkpoint_files(base_dir):
        with safe_open(str(file), framework="pt") as f:
            shapes.update({n: tuple(f.get_slice(n).get_shape()) for n in f.keys()})
    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name in sorted(shapes):
        module, shape = name.removesuffix(".weight"), shapes[name]
        if not name.endswith(".weight") or len(shape) != 2 or not matches_target(module, target_modules):
            continue
        rank = cfg.rank(module)
        a = 0.1 * torch.randn(rank, shape[1], generator=gen)
        b = 0.1 * torch.randn(shape[0], rank, generator=gen)
        for ab, t in (("A", a), ("B", b)):
            key = {"peft": f"{PEFT_PREFIX}{module}.lora_{ab}.weight",
                   "named": f"{PEFT_PREFIX}{module}.lora_{ab}.default.weight", "bare": f"{module}.lora_{ab}"}[key_style]
            tensors[key] = t.contiguous()
    if not tensors:
        raise ValueError(f"target_modules={target_modules!r} matches no 2-D weight of {base_dir}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    meta = {"peft_type": "LORA", "base_model_name_or_path": str(base_dir), "r": r, "lora_alpha": alpha,
            "target_modules": target_modules, "use_rslora": use_rslora, "rank_pattern": cfg.rank_pattern,
            "alpha_pattern": cfg.alpha_pattern, "bias": "none", "fan_in_fan_out": False, "lora_dropout": 0.0,
            "modules_to_save": None, "task_type": None, "inference_mode": True}
    (out / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out
