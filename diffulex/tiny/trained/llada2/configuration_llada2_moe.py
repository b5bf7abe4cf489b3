"""LLaDA2MoeConfig: configuration for `llada2_moe` checkpoints.

Written by Diffulex's tiny-checkpoint generator; it only stores fields (no modeling).
"""

from transformers import PretrainedConfig

# Field defaults (flagship sizes); config.json values override them.
_DEFAULTS = {   'first_k_dense_replace': 1,
    'head_dim': 128,
    'hidden_act': 'silu',
    'hidden_size': 2048,
    'intermediate_size': 5120,
    'max_position_embeddings': 16384,
    'moe_intermediate_size': 512,
    'moe_router_enable_expert_bias': True,
    'n_group': 8,
    'norm_topk_prob': True,
    'num_attention_heads': 16,
    'num_experts': 256,
    'num_experts_per_tok': 8,
    'num_hidden_layers': 20,
    'num_key_value_heads': 4,
    'num_shared_experts': 1,
    'partial_rotary_factor': 0.5,
    'rms_norm_eps': 1e-06,
    'rope_theta': 600000.0,
    'routed_scaling_factor': 2.5,
    'router_dtype': 'fp32',
    'score_function': 'sigmoid',
    'topk_group': 4,
    'use_bias': False,
    'use_qk_norm': True,
    'use_qkv_bias': False,
    'vocab_size': 157184}


class LLaDA2MoeConfig(PretrainedConfig):
    """Stores every `llada2_moe` field as a plain attribute."""

    model_type = "llada2_moe"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(self, **kwargs):
        for key, value in _DEFAULTS.items():
            value = kwargs.pop(key, value)
            setattr(self, key, list(value) if isinstance(value, list) else value)
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)
