"""Configuration modules shipped inside remote-code checkpoints (and our fallbacks).

Real remote-code checkpoints ship e.g. ``configuration_llada2_moe.py`` next to
``config.json`` and point ``auto_map["AutoConfig"]`` at it. We write our own small,
dependency-free module of the same file/class name, generated from one template, and
reuse the very same source (via ``exec``) as the fallback class that
``diffulex.config.checkpoint`` registers for directories shipping no module.
"""

from __future__ import annotations

import pprint
from dataclasses import dataclass

from transformers import PretrainedConfig


@dataclass(frozen=True)
class RemoteConfigSpec:
    """Names of a remote-code family's configuration module and class."""

    model_type: str
    module: str  # file name without ".py", as in the published checkpoint
    class_name: str
    defaults: dict  # field defaults (flagship sizes, real field names)


REMOTE_CONFIGS: dict[str, RemoteConfigSpec] = {
    "llada2": RemoteConfigSpec("llada2_moe", "configuration_llada2_moe", "LLaDA2MoeConfig", {
        "vocab_size": 157184, "hidden_size": 2048, "intermediate_size": 5120,
        "num_hidden_layers": 20, "num_attention_heads": 16, "num_key_value_heads": 4,
        "head_dim": 128, "hidden_act": "silu", "max_position_embeddings": 16384,
        "rms_norm_eps": 1e-6, "rope_theta": 600000.0, "partial_rotary_factor": 0.5,
        "use_qk_norm": True, "use_qkv_bias": False, "use_bias": False,
        "num_experts": 256, "num_experts_per_tok": 8, "num_shared_experts": 1,
        "moe_intermediate_size": 512, "first_k_dense_replace": 1, "n_group": 8,
        "topk_group": 4, "routed_scaling_factor": 2.5, "score_function": "sigmoid",
        "norm_topk_prob": True, "moe_router_enable_expert_bias": True, "router_dtype": "fp32",
    }),
    "llada": RemoteConfigSpec("llada", "configuration_llada", "LLaDAConfig", {
        "d_model": 4096, "n_heads": 32, "n_kv_heads": 32, "n_layers": 32,
        "mlp_hidden_size": 12288, "mlp_ratio": 4, "max_sequence_length": 4096,
        "vocab_size": 126464, "embedding_size": 126464, "rope": True, "rope_theta": 500000.0,
        "include_bias": False, "include_qkv_bias": False, "weight_tying": False,
        "layer_norm_type": "rms", "rms_norm_eps": 1e-5, "activation_type": "silu",
        "block_type": "llama", "mask_token_id": 126336,
    }),
    "dream": RemoteConfigSpec("Dream", "configuration_dream", "DreamConfig", {
        "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
        "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
        "hidden_act": "silu", "max_position_embeddings": 131072, "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "use_sliding_window": False,
        "sliding_window": None, "max_window_layers": 28, "attention_dropout": 0.0,
        "mask_token_id": 151666,
    }),
    "sdar": RemoteConfigSpec("sdar", "configuration_sdar", "SDARConfig", {
        "vocab_size": 151936, "hidden_size": 2560, "intermediate_size": 9728,
        "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
        "head_dim": 128, "hidden_act": "silu", "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "attention_bias": False, "attention_dropout": 0.0, "use_sliding_window": False,
        "sliding_window": None, "max_window_layers": 36, "block_size": 4,
    }),
    "sdar_moe": RemoteConfigSpec("sdar_moe", "configuration_sdar_moe", "SDARMoeConfig", {
        "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 6144,
        "num_hidden_layers": 48, "num_attention_heads": 32, "num_key_value_heads": 4,
        "head_dim": 128, "hidden_act": "silu", "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "attention_bias": False, "attention_dropout": 0.0, "num_experts": 128,
        "num_experts_per_tok": 8, "moe_intermediate_size": 768, "decoder_sparse_step": 1,
        "mlp_only_layers": [], "norm_topk_prob": True, "output_router_logits": False,
        "router_aux_loss_coef": 0.001, "block_size": 4,
    }),
    "fast_dllm_v2": RemoteConfigSpec("Fast_dLLM_Qwen", "configuration", "Fast_dLLM_QwenConfig", {
        "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
        "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
        "hidden_act": "silu", "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "use_sliding_window": False,
        "sliding_window": None, "max_window_layers": 28, "attention_dropout": 0.0,
        "bd_size": 32, "mask_token_id": 151665,
    }),
}

_TEMPLATE = '''"""{class_name}: configuration for `{model_type}` checkpoints.

Written by Diffulex's tiny-checkpoint generator; it only stores fields (no modeling).
"""

from transformers import PretrainedConfig

# Field defaults (flagship sizes); config.json values override them.
_DEFAULTS = {defaults}


class {class_name}(PretrainedConfig):
    """Stores every `{model_type}` field as a plain attribute."""

    model_type = "{model_type}"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(self, **kwargs):
        for key, value in _DEFAULTS.items():
            value = kwargs.pop(key, value)
            setattr(self, key, list(value) if isinstance(value, list) else value)
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)
'''


def config_module_source(family: str) -> str:
    """Python source of ``family``'s configuration module (deterministic text)."""
    spec = REMOTE_CONFIGS[family]
    defaults = pprint.pformat(spec.defaults, indent=4, width=88, sort_dicts=True)
    return _TEMPLATE.format(class_name=spec.class_name, model_type=spec.model_type, defaults=defaults)


_CLASS_CACHE: dict[str, type[PretrainedConfig]] = {}


def config_class(family: str) -> type[PretrainedConfig]:
    """The fallback `PretrainedConfig` subclass for ``family`` (built once from the module source)."""
    if family not in _CLASS_CACHE:
        namespace: dict = {"__name__": f"diffulex.tiny.hf_configs.{REMOTE_CONFIGS[family].module}"}
        exec(compile(config_module_source(family), f"<{family} config>", "exec"), namespace)
        _CLASS_CACHE[family] = namespace[REMOTE_CONFIGS[family].class_name]
    return _CLASS_CACHE[family]
