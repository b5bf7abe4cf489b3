"""Tiny DiffusionGemma checkpoint, built with transformers' own classes so that config
fields and weight names are exactly transformers' (``diffusion_gemma`` is native there)."""

from __future__ import annotations

import zlib
from pathlib import Path

import torch

from diffulex.tiny.recipes import HEAD_DIM, HEADS, HIDDEN, INTER, KV_HEADS, MAX_POS, TOKENIZERS, padded_vocab

CANVAS_LENGTH = 32  # tiny canvas (block) length; the real model uses 256


def _configs():
    from transformers import DiffusionGemmaConfig
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import (
        DiffusionGemmaGenerationConfig, EntropyBoundSamplerConfig)

    tok = TOKENIZERS["diffusion_gemma"]
    ids = {role: tok.role_id(role) for role in ("pad_token", "eos_token", "bos_token")}
    text = dict(
        vocab_size=padded_vocab(tok.vocab_len), hidden_size=HIDDEN, intermediate_size=INTER,
        num_hidden_layers=2, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
        head_dim=HEAD_DIM, max_position_embeddings=MAX_POS, sliding_window=64,
        # one sliding and one full layer; full layers get their own head dim and K=V heads
        layer_types=["sliding_attention", "full_attention"], global_head_dim=2 * HEAD_DIM,
        num_global_key_value_heads=1, num_experts=4, top_k_experts=2, moe_intermediate_size=32,
        pad_token_id=ids["pad_token"], eos_token_id=ids["eos_token"], bos_token_id=ids["bos_token"],
    )
    # The encoder always owns a vision tower; keep it minuscule.
    vision = dict(model_type="gemma4_vision", hidden_size=32, intermediate_size=64,
                  num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2, head_dim=16,
                  position_embedding_size=64, patch_size=4, pooling_kernel_size=2)
    config = DiffusionGemmaConfig(
        text_config=text, vision_config=vision, canvas_length=CANVAS_LENGTH,
        boi_token_id=tok.token_id("<start_of_image>"), eoi_token_id=tok.token_id("<end_of_image>"),
        image_token_id=tok.token_id("<image_soft_token>"), dtype="float32",
    )
    generation = DiffusionGemmaGenerationConfig(
        max_new_tokens=CANVAS_LENGTH, max_denoising_steps=48,
        sampler_config=EntropyBoundSamplerConfig(entropy_bound=0.1),
        t_min=0.4, t_max=0.8, stability_threshold=1, confidence_threshold=0.005,
        bos_token_id=ids["bos_token"], pad_token_id=ids["pad_token"],
        eos_token_id=[ids["eos_token"], tok.token_id("<end_of_turn>")],
    )
    return config, generation


def write_diffusion_gemma(out_dir: Path, seed: int) -> None:
    """Instantiate a tiny `DiffusionGemmaForBlockDiffusion` deterministically and save it."""
    from transformers import DiffusionGemmaForBlockDiffusion

    config, generation = _configs()
    # transformers initialises from the global RNG: fork it so callers' RNG state is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(zlib.crc32(f"diffusion_gemma:{seed}".encode()) + seed)
        model = DiffusionGemmaForBlockDiffusion(config).eval()
    model.generation_config = generation
    model.save_pretrained(str(out_dir), safe_serialization=True)
