"""Reading a PEFT LoRA adapter: ``adapter_config.json`` + ``adapter_model.safetensors``.

Key names follow PEFT: ``base_model.model.<checkpoint module>.lora_A[.<adapter name>][.weight]``
(and ``lora_B``), where ``<checkpoint module>`` is the base checkpoint's own module name, so
an adapter maps onto our parameters through the family's ``checkpoint_layout()``. Target
matching follows PEFT too: a ``target_modules`` list entry matches a module name equal to it
or ending in ``.<entry>``; a string is a regex the whole module name must match.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
PEFT_PREFIX = "base_model.model."
# <module>.lora_A | lora_B, then an optional adapter name ("default"), then an optional ".weight".
_KEY = re.compile(r"^(?P<module>.+?)\.lora_(?P<ab>[AB])(?:\.(?!weight$)[^.]+)?(?:\.weight)?$")


def matches_target(module: str, targets: str | list[str]) -> bool:
    """PEFT's rule: regex full match for a string, exact-or-``.suffix`` match for a list."""
    if isinstance(targets, str):
        return re.fullmatch(targets, module) is not None
    return any(module == t or module.endswith("." + t) for t in targets)


def _pattern_value(module: str, patterns: dict[str, Any], default: Any) -> Any:
    """First ``rank_pattern`` / ``alpha_pattern`` key matching the module name (as a name suffix)."""
    for key, value in patterns.items():
        if re.fullmatch(rf"(.*\.)?{key}", module):
            return value
    return default


@dataclass(frozen=True)
class AdapterConfig:
    """The ``adapter_config.json`` fields that change the math; unsupported options are errors."""

    r: int
    lora_alpha: float
    target_modules: str | list[str]
    use_rslora: bool = False
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)

    def rank(self, module: str) -> int:
        return _pattern_value(module, self.rank_pattern, self.r)

    def scale(self, module: str) -> float:
        """alpha / r, or alpha / sqrt(r) with rsLoRA (per-module rank and alpha from the patterns)."""
        r, alpha = self.rank(module), _pattern_value(module, self.alpha_pattern, self.lora_alpha)
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r


def read_adapter_config(path: str | Path) -> AdapterConfig:
    """Parse and check ``adapter_config.json`` under the adapter directory ``path``."""
    file = Path(path) / CONFIG_FILE
    if not file.is_file():
        raise ValueError(f"lora.path={str(path)!r}: no {CONFIG_FILE} there; point lora.path at the PEFT adapter "
                         "directory (the folder holding adapter_config.json and adapter_model.safetensors)")
    weight_file(path)  # the weights must be there too
    meta = json.loads(file.read_text())
    where = str(file)
    # PEFT options that would change the math; only their plain-LoRA values are implemented.
    plain = {"peft_type": ("LORA",), "use_dora": (False, None), "fan_in_fan_out": (False, None),
             "bias": ("none", None), "modules_to_save": (None, [])}
    for key, allowed in plain.items():
        value = meta.get(key, allowed[0])
        if value not in allowed:
            raise ValueError(f"{where}: {key}={value!r} is not supported (only {allowed[0]!r}); "
                             "export the adapter as a plain LoRA adapter")
    r, alpha, targets = meta.get("r"), meta.get("lora_alpha", 8), meta.get("target_modules")  # 8: PEFT's default
    ranks = dict(meta.get("rank_pattern") or {})
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0 or any(
            not isinstance(v, int) or v <= 0 for v in ranks.values()):
        raise ValueError(f"{where}: r={r!r}, rank_pattern={ranks!r}; every rank must be a positive int. "
                         "Fix or re-export the adapter")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
        raise ValueError(f"{where}: lora_alpha={alpha!r} must be a number; fix or re-export the adapter")
    if not targets or not isinstance(targets, (str, list)):
        raise ValueError(f"{where}: target_modules={targets!r} must be a non-empty list of module names "
                         "or a regex; fix or re-export the adapter")
    return AdapterConfig(r=r, lora_alpha=float(alpha), target_modules=targets,
                         use_rslora=bool(meta.get("use_rslora", False)), rank_pattern=ranks,
                         alpha_pattern=dict(meta.get("alpha_pattern") or {}))


def weight_file(path: str | Path) -> Path:
    """The adapter's weight file; ValueError naming the fix when absent."""
    for name in WEIGHT_FILES:
        if (Path(path) / name).is_file():
            return Path(path) / name
    raise ValueError(f"lora.path={str(path)!r}: no adapter_model.safetensors (or .bin) there; "
                     "the adapter's weights are missing: re-download or re-export the adapter")


def module_of(key: str) -> tuple[str, str]:
    """``(checkpoint module name, "A" | "B")`` of one adapter tensor key; ValueError for non-LoRA keys."""
    name = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
    if "lora_embedding_" in name or "lora_magnitude_vector" in name:
        raise ValueError(f"adapter tensor {key!r}: LoRA on embeddings and DoRA are not supported")
    m = _KEY.match(name)
    if m is None:
        raise ValueError(f"adapter tensor {key!r} is not a lora_A / lora_B weight (modules_to_save and LoRA biases "
                         "are not supported); export a plain LoRA adapter")
    return m["module"], m["ab"]


def checkpoint_tensor_names(path: str | Path) -> list[str]:
    """Tensor names of a base checkpoint, read from the safetensors headers only."""
    from safetensors import safe_open

    from diffulex.models.weights import checkpoint_files

    names: list[str] = []
    for file in checkpoint_files(path):
        with safe_open(str(file), framework="pt") as f:
            names += list(f.keys())
    return names


def _keys(file: Path) -> list[str]:
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(file), framework="pt") as f:
                return list(f.keys())
        except Exception as err:  # safetensors raises its own error type for a corrupt header
            raise ValueError(f"{file} is not a readable safetensors file ({err}); re-download the adapter") from None
    return list(_read_tensors(file))


def _read_tensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(file))
        return torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{file} could not be read ({err}); re-download the adapter") from None


def adapter_modules(keys: Iterable[str], where: str) -> dict[str, dict[str, str]]:
    """module -> {"A": key, "B": key}; ValueError on an unpaired or duplicated tensor."""
    pairs: dict[str, dict[str, str]] = {}
    for key in keys:
        module, ab = module_of(key)
        if ab in pairs.setdefault(module, {}):
            raise ValueError(f"{where}: {key!r} duplicates {pairs[module][ab]!r} (several adapters in one file?)")
        pairs[module][ab] = key
    if not pairs:
        raise ValueError(f"{where} holds no lora_A / lora_B tensors; re-export the adapter")
    for module, pair in pairs.items():
        if set(pair) != {"A", "B"}:
            raise ValueError(f"{where}: module {module!r} has lora_{next(iter(pair))} but no "
                             f"lora_{'B' if 'A' in pair else 'A'}; re-export the adapter")
    return pairs


def check_adapter(path: str | Path, checkpoint_names: Iterable[str]) -> AdapterConfig:
    """Config-time check of an adapter against a checkpoint's tensor names (no tensors read).

    Every target module must match some checkpoint module, and every adapter module must be a
    checkpoint module with a ``.weight`` tensor.
    """
    cfg = read_adapter_config(path)
    file = weight_file(path)
    modules = {n.rsplit(".", 1)[0] for n in checkpoint_names if n.endswith(".weight")}
    targets = cfg.target_modules
    for entry in [targets] if isinstance(targets, str) else [[t] for t in targets]:
        if not any(matches_target(m, entry) for m in modules):
            raise ValueError(f"lora target_modules entry {entry!r} ({Path(path) / CONFIG_FILE}) matches no module "
                             f"of the base checkpoint (e.g. {sorted(modules)[:3]}); is the adapter for another "
                             "model family? Use an adapter trained on this checkpoint")
    for module in adapter_modules(_keys(file), str(file)):
        if module not in modules:
            raise ValueError(f"{file}: adapter module {module!r} has no base tensor {module + '.weight'!r} in the "
                             "checkpoint; is the adapter for another model family?")
    return cfg


@dataclass(frozen=True)
class LoRAWeights:
    """One adapted module: ``delta = scale * B @ A`` with ``A: [r, in]``, ``B: [out, r]`` (full, unsliced)."""

    module: str  # checkpoint module name; its base tensor is ``module + ".weight"``
    a: torch.Tensor
    b: torch.Tensor
    scale: float

    def delta(self) -> torch.Tensor:
        """``scale * B @ A`` in float32, ``[out, in]``."""
        return self.scale * (self.b.float() @ self.a.float())


def load_adapter(path: str | Path) -> tuple[AdapterConfig, list[LoRAWeights]]:
    """Read an adapter directory: its config and one :class:`LoRAWeights` per adapted module (ranks checked)."""
    cfg = read_adapter_config(path)
    file = weight_file(path)
    tensors = _read_tensors(file)
    out = []
    for module, pair in adapter_modules(tensors, str(file)).items():
        a, b, r = tensors[pair["A"]], tensors[pair["B"]], cfg.rank(module)
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != r or b.shape[1] != r:
            raise ValueError(f"{file}: module {module!r} has lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)}; "
                             f"expected [r, in] and [out, r] with r={r} from adapter_config.json")
        out.append(LoRAWeights(module, a, b, cfg.scale(module)))
    return cfg, out
