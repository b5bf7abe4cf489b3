"""Offline loading of a checkpoint's HF config and tokenizer, plus the facts Diffulex needs.

Works for real hub checkpoints and for Diffulex's tiny ones: directories that ship their
configuration module (``auto_map``) load it with ``trust_remote_code``; directories that
don't fall back to small config classes registered here for the remote-code model types.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoTokenizer, PretrainedConfig

# model_type (lower-cased) -> family name; architectures are a second clue.
_MODEL_TYPE_FAMILY = {
    "llada2_moe": "llada2", "llada2": "llada2", "llada": "llada", "dream": "dream",
    "sdar": "sdar", "sdar_moe": "sdar_moe", "fast_dllm_qwen": "fast_dllm_v2",
    "fastdllmv2": "fast_dllm_v2", "diffusion_gemma": "diffusion_gemma",
}
_ARCH_FAMILY = {
    "LLaDA2MoeModelLM": "llada2", "LLaDAModelLM": "llada", "DreamModel": "dream",
    "SDARForCausalLM": "sdar", "SDARMoeForCausalLM": "sdar_moe",
    "Fast_dLLM_QwenForCausalLM": "fast_dllm_v2",
    "DiffusionGemmaForBlockDiffusion": "diffusion_gemma",
}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
_registered = False


def register_fallback_configs() -> None:
    """Register our config classes for the remote-code model types (idempotent)."""
    global _registered
    if _registered:
        return
    from diffulex.tiny.hf_configs import REMOTE_CONFIGS, config_class

    for family, spec in REMOTE_CONFIGS.items():
        AutoConfig.register(spec.model_type, config_class(family), exist_ok=True)
    _registered = True


def _read_config_dict(path: Path) -> dict[str, Any]:
    cfg_file = path / "config.json"
    if not path.is_dir():
        raise ValueError(f"checkpoint path {path} is not a directory")
    if not cfg_file.is_file():
        raise ValueError(f"checkpoint directory {path} has no config.json")
    try:
        data = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{cfg_file} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{cfg_file} must hold a JSON object, got {type(data).__name__}")
    if "model_type" not in data:
        raise ValueError(f"{cfg_file} has no 'model_type' field")
    return data


def load_hf_config(path, trust_remote_code: bool = True) -> PretrainedConfig:
    """Load ``path``'s HF config fully offline (ValueError if config.json is missing/malformed).

    ``trust_remote_code`` (the seed's rule, default): the checkpoint's own configuration module
    when ``auto_map`` names one that is present (it runs); otherwise our registered fallback
    class (or transformers' native one). False: never the checkpoint's module — our class for
    the families Diffulex implements, transformers' for its own model types, else an error.
    """
    path = Path(path)
    data = _read_config_dict(path)
    register_fallback_configs()
    auto_cfg = (data.get("auto_map") or {}).get("AutoConfig")
    module_file = path / (auto_cfg.rsplit(".", 1)[0] + ".py") if isinstance(auto_cfg, str) else None
    if trust_remote_code and module_file is not None and module_file.is_file():
        return AutoConfig.from_pretrained(str(path), trust_remote_code=True, local_files_only=True)
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = data["model_type"]
    if model_type not in CONFIG_MAPPING:
        if not trust_remote_code and module_file is not None:
            raise ValueError(f"{path}: model_type {model_type!r} needs the checkpoint's own code "
                             f"({module_file.name}), and model.trust_remote_code is false; set it to true "
                             "to run that code, or use a checkpoint of a family Diffulex implements")
        raise ValueError(f"{path}: unknown model_type {model_type!r} and no configuration module shipped")
    # auto_map may point at a module that is not there: build from the dict, without remote code.
    data = {k: v for k, v in data.items() if k != "auto_map"}
    return CONFIG_MAPPING[model_type].from_dict(data)


def auto_tokenizer_from_pretrained(path, trust_remote_code: bool = True):
    """Load the checkpoint's tokenizer offline (ValueError if no tokenizer files).

    ``trust_remote_code=False``: a tokenizer whose ``auto_map`` names a module in the folder is
    loaded from ``tokenizer.json`` with the fast tokenizer class instead (the module never runs).
    """
    path = Path(path)
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise ValueError(f"checkpoint directory {path} has no tokenizer files "
                         f"(expected one of {', '.join(_TOKENIZER_FILES)})")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        file = path / name
        if file.is_file():
            try:
                json.loads(file.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ValueError(f"{file} is not valid JSON ({exc}); the checkpoint's tokenizer files are broken: "
                                 "copy them again from the original checkpoint") from None
    if not trust_remote_code:
        config = json.loads((path / "tokenizer_config.json").read_text()) if (path / "tokenizer_config.json").is_file() else {}
        if (config.get("auto_map") or {}).get("AutoTokenizer"):
            if not (path / "tokenizer.json").is_file():
                raise ValueError(f"{path}: the tokenizer needs the checkpoint's own code (auto_map) and has no "
                                 "tokenizer.json, while model.trust_remote_code is false; set it to true")
            from transformers import PreTrainedTokenizerFast

            return PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)
    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code, local_files_only=True)


@dataclass(frozen=True)
class CheckpointFacts:
    """Family-independent facts read from a checkpoint's config (None where absent)."""

    family: str | None
    model_type: str
    architectures: tuple[str, ...]
    vocab_size: int
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    num_layers: int
    num_experts: int
    max_position_embeddings: int | None
    mask_token_id: int | None
    eos_token_ids: tuple[int, ...]
    native_block_size: int | None


def detect_family(model_type: str | None, architectures) -> str | None:
    """Family name from model_type, else from architectures; None when unknown."""
    family = _MODEL_TYPE_FAMILY.get(str(model_type or "").lower())
    if family is None:
        family = next((_ARCH_FAMILY[a] for a in architectures or () if a in _ARCH_FAMILY), None)
    return family


def _first(configs, *names, default=None):
    """First non-None attribute among ``names`` across ``configs`` (outer config first)."""
    for cfg in configs:
        for name in names:
            try:
                value = getattr(cfg, name, None)
            except Exception:  # e.g. DiffusionGemma's guarded per-layer fields
                value = vars(cfg).get(name)
            if value is not None:
                return value
    return default


def _as_ids(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def read_checkpoint_facts(path, hf_config: PretrainedConfig) -> CheckpointFacts:
    """Collect :class:`CheckpointFacts` from ``hf_config`` and ``path/generation_config.json``."""
    text = getattr(hf_config, "text_config", None)
    configs = [c for c in (hf_config, text) if c is not None]
    architectures = tuple(getattr(hf_config, "architectures", None) or ())
    family = detect_family(hf_config.model_type, architectures)

    heads = int(_first(configs, "num_attention_heads", "n_heads", default=0))
    kv_heads = _first(configs, "num_key_value_heads", "n_kv_heads", default=None)
    experts = _first(configs, "num_experts", "n_routed_experts", default=0) or 0
    max_pos = _first(configs, "max_position_embeddings", "max_sequence_length")

    eos: list[int] = []
    eos += _as_ids(_first(configs, "eos_token_id"))
    gen_file = Path(path) / "generation_config.json"
    if gen_file.is_file():
        try:
            eos += _as_ids(json.loads(gen_file.read_text()).get("eos_token_id"))
        except (json.JSONDecodeError, AttributeError) as exc:
            raise ValueError(f"{gen_file} is not a valid JSON object: {exc}") from exc
    block = _first(configs, "block_size", "bd_size", "canvas_length")
    for names in (("vocab_size",), ("hidden_size", "d_model"), ("num_attention_heads", "n_heads"),
                  ("num_key_value_heads", "n_kv_heads"), ("num_hidden_layers", "n_layers"),
                  ("intermediate_size",), ("head_dim",), ("max_position_embeddings", "max_sequence_length")):
        value = _first(configs, *names, default=None)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{Path(path) / 'config.json'}: {names[0]}={value!r} is invalid: a model dimension "
                             "must be a positive int; the checkpoint's config.json is broken")

    return CheckpointFacts(
        family=family,
        model_type=hf_config.model_type,
        architectures=architectures,
        vocab_size=int(_first(configs, "vocab_size", default=0)),
        hidden_size=int(_first(configs, "hidden_size", "d_model", default=0)),
        num_attention_heads=heads,
        num_key_value_heads=int(kv_heads) if kv_heads is not None else heads,
        num_layers=int(_first(configs, "num_hidden_layers", "n_layers", default=0)),
        num_experts=int(experts),
        max_position_embeddings=int(max_pos) if max_pos is not None else None,
        mask_token_id=_first(configs, "mask_token_id"),
        eos_token_ids=tuple(dict.fromkeys(eos)),  # dedupe, keep order
        native_block_size=int(block) if block is not None else None,
    )
