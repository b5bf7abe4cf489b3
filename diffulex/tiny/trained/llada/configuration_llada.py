"""LLaDAConfig: configuration for `llada` checkpoints.

Written by Diffulex's tiny-checkpoint generator; it only stores fields (no modeling).
"""

from transformers import PretrainedConfig

# Field defaults (flagship sizes); config.json values override them.
_DEFAULTS = {   'activation_type': 'silu',
    'block_type': 'llama',
    'd_model': 4096,
    'embedding_size': 126464,
    'include_bias': False,
    'include_qkv_bias': False,
    'layer_norm_type': 'rms',
    'mask_token_id': 126336,
    'max_sequence_length': 4096,
    'mlp_hidden_size': 12288,
    'mlp_ratio': 4,
    'n_heads': 32,
    'n_kv_heads': 32,
    'n_layers': 32,
    'rms_norm_eps': 1e-05,
    'rope': True,
    'rope_theta': 500000.0,
    'vocab_size': 126464,
    'weight_tying': False}


class LLaDAConfig(PretrainedConfig):
    """Stores every `llada` field as a plain attribute."""

    model_type = "llada"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(self, **kwargs):
        for key, value in _DEFAULTS.items():
            value = kwargs.pop(key, value)
            setattr(self, key, list(value) if isinstance(value, list) else value)
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)
