"""SDARConfig: configuration for `sdar` checkpoints.

Written by Diffulex's tiny-checkpoint generator; it only stores fields (no modeling).
"""

from transformers import PretrainedConfig

# Field defaults (flagship sizes); config.json values override them.
_DEFAULTS = {   'attention_bias': False,
    'attention_dropout': 0.0,
    'block_size': 4,
    'head_dim': 128,
    'hidden_act': 'silu',
    'hidden_size': 2560,
    'intermediate_size': 9728,
    'max_position_embeddings': 32768,
    'max_window_layers': 36,
    'num_attention_heads': 32,
    'num_hidden_layers': 36,
    'num_key_value_heads': 8,
    'rms_norm_eps': 1e-06,
    'rope_theta': 1000000.0,
    'sliding_window': None,
    'use_sliding_window': False,
    'vocab_size': 151936}


class SDARConfig(PretrainedConfig):
    """Stores every `sdar` field as a plain attribute."""

    model_type = "sdar"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(self, **kwargs):
        for key, value in _DEFAULTS.items():
            value = kwargs.pop(key, value)
            setattr(self, key, list(value) if isinstance(value, list) else value)
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)
