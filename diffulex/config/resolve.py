"""``resolve_config``: the rules that run when a Config is built (SPEC §2, in order).

1. flat names land on their group fields; 2. the model path is resolved and must exist;
3. the HF config is loaded offline and the model name checked against the checkpoint's
family; 4. the strategy is chosen and normalized (the seed's table); 5. sampling, sizes,
parallel topology, LoRA and runtime flags are validated, the weight format is settled against the
checkpoint's (quantization); 6. the tokenizer is loaded and
its vocabulary size, EOS ids and mask token recorded; 7. max_model_len is clamped.
"""

from __future__ import annotations

import os
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from .enums import SamplingMode, StrategyName
from .errors import Notes, config_error
from .families import EDIT_ONLY_NAMES, FAMILIES, MODEL_NAMES
from .quantization import resolve_quantization
from .validate import validate_lora, validate_parallel, validate_runtime

if TYPE_CHECKING:
    from .config import Config


def resolve_config(cfg: "Config", flat: dict[str, Any], notes: Notes) -> None:
    from .checkpoint import auto_tokenizer_from_pretrained, load_hf_config, read_checkpoint_facts
    from .aliases import FLAT_ALIASES
    from .config import strategy_from_dict

    flat = {FLAT_ALIASES[k]: v for k, v in flat.items()}
    for group in (cfg.model, cfg.sampling, cfg.parallel, cfg.cache, cfg.runtime, cfg.quantization):
        group.validate()
    _apply_flat(cfg, {k: v for k, v in flat.items() if not k.startswith("strategy.")}, skip_strategy=True)
    cfg.model.validate()

    _resolve_model_path(cfg)
    cfg.hf_config = load_hf_config(cfg.model.path, cfg.model.trust_remote_code)
    cfg.checkpoint = facts = read_checkpoint_facts(cfg.model.path, cfg.hf_config)
    cfg.family = _resolve_family(cfg, facts)
    traits = FAMILIES[cfg.family]

    # Strategy: chosen by the user, else the family's native one. A strategy the family cannot
    # run is an error, never a silent rewrite (DiffusionGemma runs only its native canvas loop).
    if cfg.strategy is None:
        cfg.strategy = strategy_from_dict(traits.native_strategy, {})
    _apply_flat(cfg, {k: v for k, v in flat.items() if k.startswith("strategy.")}, skip_strategy=False)
    if cfg.strategy.name not in traits.strategies:
        raise config_error("strategy.name", cfg.strategy.name, f"one of {sorted(s.value for s in traits.strategies)} "
                           f"for model family {cfg.family!r}",
                           f"pick a strategy this family supports (its native one is {traits.native_strategy.value!r})")

    # Sampling mode against the family (edit needs an edit-trained LLaDA2 checkpoint).
    if cfg.sampling.mode == SamplingMode.EDIT and not traits.edit_capable:
        raise config_error("sampling.mode", "edit", f"'naive' for model family {cfg.family!r}",
                           "edit sampling needs an edit-capable LLaDA2.x checkpoint; use sampling_mode='naive'")
    if cfg.model.name in EDIT_ONLY_NAMES and cfg.sampling.mode != SamplingMode.EDIT:
        raise config_error("sampling.mode", cfg.sampling.mode, f"'edit' for model {cfg.model.name!r}",
                           "this checkpoint was trained for editing: pass sampling_mode='edit'")
    cfg.strategy.normalize(cfg, notes)

    validate_parallel(cfg, facts)
    validate_lora(cfg)
    validate_runtime(cfg, facts, notes)
    resolve_quantization(cfg, notes)
    _resolve_tokenizer(cfg, auto_tokenizer_from_pretrained(cfg.model.path, cfg.model.trust_remote_code), facts)


def _apply_flat(cfg: "Config", flat: dict[str, Any], skip_strategy: bool) -> None:
    """Set each flat alias on its group; a field the chosen group class lacks is an error."""
    from .aliases import FLAT_ALIASES

    names_by_path = {v: k for k, v in FLAT_ALIASES.items()}
    for dotted, value in flat.items():
        key = names_by_path.get(dotted, dotted)
        group_name, attr = dotted.split(".", 1)
        group = getattr(cfg, group_name)
        names = {f.name for f in fields(group)}
        if attr not in names:
            owner = f"strategy {group.name.value!r}" if group_name == "strategy" else (
                f"sampling mode {group.mode.value!r}" if group_name == "sampling" else group_name)
            raise ValueError(f"{key}={value!r}: {dotted} is not an option of {owner}; its options are "
                             f"{sorted(names - {'name', 'mode'})}. Drop it, or choose the strategy / "
                             f"sampling mode that uses it")
        setattr(group, attr, value)
        if group_name != "strategy" and hasattr(group, "validate"):
            group.validate()


def _resolve_model_path(cfg: "Config") -> None:
    m = cfg.model
    root = cfg.model_root or os.environ.get("DIFFULEX_MODEL_ROOT", "")
    if m.path and root and not os.path.isabs(os.path.expanduser(m.path)):
        m.path = os.path.join(os.path.expanduser(root), os.path.expanduser(m.path))  # every relative path: under the root
    if m.tiny is not None:
        from ..tiny import TINY_FAMILIES, ensure_tiny_checkpoint, trained_families

        if m.tiny not in TINY_FAMILIES:
            raise config_error("model.tiny", m.tiny, f"one of {list(TINY_FAMILIES)}", "pick a tiny family")
        if m.trained and m.tiny not in trained_families():
            raise config_error("model.trained", True, f"a family with a shipped trained model "
                               f"({', '.join(trained_families())}) in model.tiny",
                               f"pick one of those, or set model.trained=false for random {m.tiny} weights")
        # A path given with a tiny preset must be an existing checkpoint: a typo never writes files.
        if m.path and not os.path.isdir(os.path.expanduser(m.path)):
            raise config_error("model.path", m.path, "an existing checkpoint directory (or unset, for the "
                               f"tiny {m.tiny} checkpoint)", "fix the path, or drop model.path; to write a "
                               f"tiny checkpoint somewhere: python -m diffulex.tiny --family {m.tiny} --out DIR"
                               + (" --trained" if m.trained else ""))
        if not m.path:
            m.path = str(ensure_tiny_checkpoint(m.tiny, trained=m.trained))
    if not m.path:
        raise config_error("model.path", m.path, "an existing checkpoint directory",
                           "pass the checkpoint directory: Diffulex('/path/to/checkpoint', ...)")
    path = os.path.expanduser(m.path)
    if not os.path.isabs(path) and root:
        path = os.path.join(os.path.expanduser(root), path)
    if not os.path.isdir(path):
        where = (f" (model_root={root!r})" if root else
                 " (no model root set: relative paths resolve against the current directory)")
        raise config_error("model.path", path, "an existing local checkpoint directory" + where,
                           "download the checkpoint there, or point model.path / model_root (env "
                           "DIFFULEX_MODEL_ROOT, Hydra: model_root=...) at the directory that holds it")
    m.path = os.path.abspath(path)


def _resolve_family(cfg: "Config", facts: Any) -> str:
    name = cfg.model.name
    detected = facts.family
    if name is None:
        if detected is None:
            raise config_error("model.name", None, f"one of {sorted(MODEL_NAMES)}",
                               f"the checkpoint's model_type {facts.model_type!r} is not a known family; pass model_name=...")
        cfg.model.name = detected
        return detected
    if name not in MODEL_NAMES:
        raise config_error("model.name", name, f"one of {sorted(MODEL_NAMES)}", "pick a registered model name")
    family = MODEL_NAMES[name]
    if detected is not None and detected != family:
        raise config_error("model.name", name, f"a name of family {detected!r} for this checkpoint "
                           f"(model_type {facts.model_type!r})",
                           f"this checkpoint belongs to family {detected!r}: pass model_name={detected!r} or point "
                           "model.path at a checkpoint of the family you meant")
    return family


def _resolve_tokenizer(cfg: "Config", tokenizer: Any, facts: Any) -> None:
    cfg.tokenizer = tokenizer
    cfg.tokenizer_vocab_size = len(tokenizer)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    cfg.eos_token_ids = tuple(dict.fromkeys(eos + list(facts.eos_token_ids)))
    if not cfg.eos_token_ids:
        raise ValueError(f"model.path={cfg.model.path!r}: neither the tokenizer nor config.json / "
                         "generation_config.json names an EOS token; fix the checkpoint's tokenizer_config.json")
    if cfg.model.mask_token_id is None:
        from_tok = getattr(tokenizer, "mask_token_id", None)
        cfg.model.mask_token_id = from_tok if from_tok is not None else facts.mask_token_id
    if cfg.model.mask_token_id is None and FAMILIES[cfg.family].mask_free:
        pass  # e.g. DiffusionGemma: its canvas starts from random tokens, no mask token is used
    elif cfg.model.mask_token_id is None:
        raise config_error("model.mask_token_id", None, "an int", "the checkpoint exposes no mask token: pass "
                           "mask_token_id=... (the id the model was trained with)")
    if cfg.model.mask_token_id is not None and cfg.model.mask_token_id >= facts.vocab_size:
        raise config_error("model.mask_token_id", cfg.model.mask_token_id, f"< vocab_size={facts.vocab_size}",
                           "pass the checkpoint's real mask token id")
