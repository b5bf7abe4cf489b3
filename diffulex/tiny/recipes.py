"""Per-family facts for tiny checkpoints: tokenizer specials, config.json, generation_config.json.

Field names, ``model_type``, ``architectures`` and ``auto_map`` follow the published
checkpoints (see ``/work/shared/MODELS.md``); sizes are tiny.
"""

from __future__ import annotations

from diffulex.tiny.hf_configs import REMOTE_CONFIGS
from diffulex.tiny.sizes import DEFAULT_SIZE, TinySize
from diffulex.tiny.tokenizer import TokenizerSpec

TINY_FAMILIES: tuple[str, ...] = (
    "llada2", "llada", "dream", "sdar", "sdar_moe", "fast_dllm_v2", "diffusion_gemma",
)

# Shared tiny sizes of the random-weight checkpoints (trained ones pass their own TinySize).
_D = DEFAULT_SIZE
HIDDEN, HEADS, KV_HEADS, HEAD_DIM, INTER, LAYERS, MAX_POS = (
    _D.hidden, _D.heads, _D.kv_heads, _D.head_dim, _D.inter, _D.layers, _D.max_pos)
EXPERTS, TOP_K, MOE_INTER = _D.experts, _D.top_k, _D.moe_inter

_QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

TOKENIZERS: dict[str, TokenizerSpec] = {
    "llada2": TokenizerSpec(
        ("<|startoftext|>", "<|endoftext|>", "<|mask|>", "<role>", "</role>", "<|role_end|>"),
        {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
         "pad_token": "<|endoftext|>", "mask_token": "<|mask|>"},
        "{% for m in messages %}<role>{% if m['role'] == 'user' %}HUMAN{% else %}"
        "{{ m['role'] | upper }}{% endif %}</role>{{ m['content'] }}<|role_end|>{% endfor %}"
        "{% if add_generation_prompt %}<role>ASSISTANT</role>{% endif %}",
    ),
    "llada": TokenizerSpec(
        ("<|startoftext|>", "<|endoftext|>", "<|start_header_id|>", "<|end_header_id|>",
         "<|eot_id|>", "<|mdm_mask|>"),
        # The real LLaDA tokenizer exposes no mask_token attribute; <|mdm_mask|> is looked up.
        {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
        "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>"
        "\n\n{{ m['content'] }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
        "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}",
    ),
    "dream": TokenizerSpec(
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|beginoftext|>", "<|mask|>"),
        {"bos_token": "<|beginoftext|>", "eos_token": "<|endoftext|>",
         "pad_token": "<|endoftext|>", "mask_token": "<|mask|>"},
        _QWEN_TEMPLATE,
    ),
    "sdar": TokenizerSpec(
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<|MASK|>"),
        {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "mask_token": "<|MASK|>"},
        _QWEN_TEMPLATE,
    ),
    "fast_dllm_v2": TokenizerSpec(
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "|<MASK>|"),
        {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "mask_token": "|<MASK>|"},
        _QWEN_TEMPLATE,
    ),
    "diffusion_gemma": TokenizerSpec(
        ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>",
         "<start_of_image>", "<end_of_image>", "<image_soft_token>"),
        {"pad_token": "<pad>", "eos_token": "<eos>", "bos_token": "<bos>",
         "unk_token": "<unk>", "mask_token": "<mask>"},
        "{{ bos_token }}{% for m in messages %}<start_of_turn>{% if m['role'] == 'assistant' %}"
        "model{% else %}{{ m['role'] }}{% endif %}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
        "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}",
    ),
}
TOKENIZERS["sdar_moe"] = TOKENIZERS["sdar"]


def padded_vocab(tokenizer_len: int) -> int:
    """Config vocab size: the next multiple of 64 strictly above the tokenizer length."""
    return (tokenizer_len // 64 + 1) * 64


def _auto_map(family: str, model_module: str, *classes: tuple[str, str]) -> dict:
    spec = REMOTE_CONFIGS[family]
    out = {"AutoConfig": f"{spec.module}.{spec.class_name}"}
    out.update({auto: f"{model_module}.{cls}" for auto, cls in classes})
    return out


def _qwen_fields(vocab: int, s: TinySize) -> dict:
    return {
        "vocab_size": vocab, "hidden_size": s.hidden, "intermediate_size": s.inter,
        "num_hidden_layers": s.layers, "num_attention_heads": s.heads, "num_key_value_heads": s.kv_heads,
        "hidden_act": "silu", "max_position_embeddings": s.max_pos, "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "initializer_range": 0.02,
        "use_cache": False, "use_sliding_window": False, "sliding_window": None,
        "max_window_layers": s.layers, "attention_dropout": 0.0, "tie_word_embeddings": False,
        "torch_dtype": "float32",
    }


def config_json(family: str, size: TinySize = DEFAULT_SIZE, tok: TokenizerSpec | None = None) -> dict:
    """config.json contents for a remote-code family (diffusion_gemma is built by transformers).

    ``size``: widths and depths; ``tok``: the tokenizer it goes with (default: the family's)."""
    tok = tok or TOKENIZERS[family]
    vocab = padded_vocab(tok.vocab_len)
    s = size
    if family == "llada2":
        return {
            "architectures": ["LLaDA2MoeModelLM"], "model_type": "llada2_moe",
            "auto_map": _auto_map(family, "modeling_llada2_moe", ("AutoModel", "LLaDA2MoeModel"),
                                  ("AutoModelForCausalLM", "LLaDA2MoeModelLM")),
            "vocab_size": vocab, "hidden_size": s.hidden, "intermediate_size": s.inter,
            "num_hidden_layers": s.layers, "num_attention_heads": s.heads,
            "num_key_value_heads": s.kv_heads, "head_dim": s.head_dim, "hidden_act": "silu",
            "max_position_embeddings": s.max_pos, "rms_norm_eps": 1e-6, "rope_theta": 600000.0,
            "partial_rotary_factor": 0.5, "use_qk_norm": True,
            "use_qkv_bias": False, "use_bias": False, "num_experts": s.experts,
            "num_experts_per_tok": s.top_k, "num_shared_experts": 1,
            "moe_intermediate_size": s.moe_inter, "first_k_dense_replace": 1, "n_group": 4,
            "topk_group": 2, "routed_scaling_factor": 2.5, "score_function": "sigmoid",
            "norm_topk_prob": True, "moe_router_enable_expert_bias": True, "router_dtype": "fp32",
            "output_router_logits": False, "initializer_range": 0.02, "use_cache": False,
            "tie_word_embeddings": False, "torch_dtype": "float32",
            "pad_token_id": tok.role_id("pad_token"), "eos_token_id": tok.role_id("eos_token"),
        }
    if family == "llada":
        return {
            "architectures": ["LLaDAModelLM"], "model_type": "llada",
            "auto_map": _auto_map(family, "modeling_llada", ("AutoModel", "LLaDAModelLM"),
                                  ("AutoModelForCausalLM", "LLaDAModelLM")),
            "d_model": s.hidden, "n_heads": s.heads, "n_kv_heads": s.kv_heads, "n_layers": s.layers,
            "mlp_hidden_size": s.inter, "mlp_ratio": 2, "max_sequence_length": s.max_pos,
            "vocab_size": vocab, "embedding_size": vocab, "rope": True, "rope_theta": 500000.0,
            "include_bias": False, "include_qkv_bias": False, "weight_tying": False,
            "layer_norm_type": "rms", "rms_norm_eps": 1e-5, "activation_type": "silu",
            "block_type": "llama", "alibi": False, "flash_attention": False,
            "attention_dropout": 0.0, "residual_dropout": 0.0, "embedding_dropout": 0.0,
            "init_std": 0.02, "use_cache": False, "torch_dtype": "float32",
            "mask_token_id": tok.token_id("<|mdm_mask|>"),
            "eos_token_id": tok.role_id("eos_token"), "pad_token_id": tok.role_id("pad_token"),
        }
    if family == "dream":
        # Dream's config uses <|endoftext|> for bos/eos/pad (its tokenizer's bos is <|beginoftext|>).
        eot = tok.token_id("<|endoftext|>")
        return {
            "architectures": ["DreamModel"], "model_type": "Dream",
            "auto_map": _auto_map(family, "modeling_dream", ("AutoModel", "DreamModel")),
            **_qwen_fields(vocab, s),
            "bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot,
            "mask_token_id": tok.role_id("mask_token"),
        }
    if family in ("sdar", "sdar_moe"):
        moe = family == "sdar_moe"
        prefix = "SDARMoe" if moe else "SDAR"
        module = "modeling_sdar_moe" if moe else "modeling_sdar"
        out = {
            "architectures": [f"{prefix}ForCausalLM"], "model_type": family,
            "auto_map": _auto_map(family, module, ("AutoModel", f"{prefix}Model"),
                                  ("AutoModelForCausalLM", f"{prefix}ForCausalLM")),
            **_qwen_fields(vocab, s), "head_dim": s.head_dim, "attention_bias": False,
            "bos_token_id": tok.token_id("<|endoftext|>"), "eos_token_id": tok.role_id("eos_token"),
            "block_size": 4,
        }
        if moe:
            out.update({"num_experts": s.experts, "num_experts_per_tok": s.top_k,
                        "moe_intermediate_size": s.moe_inter, "decoder_sparse_step": 1,
                        "mlp_only_layers": [], "norm_topk_prob": True,
                        "output_router_logits": False, "router_aux_loss_coef": 0.001})
        return out
    if family == "fast_dllm_v2":
        return {
            "architectures": ["Fast_dLLM_QwenForCausalLM"], "model_type": "Fast_dLLM_Qwen",
            "auto_map": _auto_map(family, "modeling", ("AutoModel", "Fast_dLLM_QwenModel"),
                                  ("AutoModelForCausalLM", "Fast_dLLM_QwenForCausalLM")),
            **_qwen_fields(vocab, s),
            "bos_token_id": tok.token_id("<|endoftext|>"), "eos_token_id": tok.role_id("eos_token"),
            "mask_token_id": tok.role_id("mask_token"), "bd_size": 32,
        }
    raise ValueError(f"no config.json recipe for family {family!r}")


def generation_config_json(family: str, tok: TokenizerSpec | None = None) -> dict | None:
    """generation_config.json contents where the real checkpoint ships one (else None)."""
    tok = tok or TOKENIZERS[family]
    if family in ("sdar", "sdar_moe"):
        # SDAR stops on both <|im_end|> and <|endoftext|>.
        eot = tok.token_id("<|endoftext|>")
        return {"bos_token_id": eot, "pad_token_id": eot,
                "eos_token_id": [tok.token_id("<|im_end|>"), eot]}
    if family == "fast_dllm_v2":
        eot = tok.token_id("<|endoftext|>")
        return {"bos_token_id": eot, "pad_token_id": eot,
                "eos_token_id": [tok.token_id("<|im_end|>"), eot]}
    if family == "dream":
        eot = tok.token_id("<|endoftext|>")
        return {"bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot}
    if family == "llada":
        return {"bos_token_id": tok.role_id("bos_token"), "eos_token_id": tok.role_id("eos_token"),
                "pad_token_id": tok.role_id("pad_token")}
    if family == "llada2":
        return {"eos_token_id": tok.role_id("eos_token"), "pad_token_id": tok.role_id("pad_token")}
    return None  # diffusion_gemma's is written by transformers' save_pretrained
