"""Tensor names/shapes per family (real checkpoint names) and deterministic initialisation."""

from __future__ import annotations

import zlib

import torch

from diffulex.tiny.recipes import EXPERTS, HEAD_DIM, HEADS, HIDDEN, INTER, KV_HEADS, LAYERS, MOE_INTER

# kind → how the tensor is initialised (see ``init_tensors``).
Shape = tuple[int, ...]


def _mlp(prefix: str, inter: int) -> list[tuple[str, Shape, str]]:
    return [
        (f"{prefix}.gate_proj.weight", (inter, HIDDEN), "linear"),
        (f"{prefix}.up_proj.weight", (inter, HIDDEN), "linear"),
        (f"{prefix}.down_proj.weight", (HIDDEN, inter), "linear"),
    ]


def _qwen_attention(p: str, bias: bool, qk_norm: bool) -> list[tuple[str, Shape, str]]:
    q, kv = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    out = [(f"{p}.q_proj.weight", (q, HIDDEN), "linear"), (f"{p}.k_proj.weight", (kv, HIDDEN), "linear"),
           (f"{p}.v_proj.weight", (kv, HIDDEN), "linear"), (f"{p}.o_proj.weight", (HIDDEN, q), "linear")]
    if bias:
        out += [(f"{p}.q_proj.bias", (q,), "bias"), (f"{p}.k_proj.bias", (kv,), "bias"),
                (f"{p}.v_proj.bias", (kv,), "bias")]
    if qk_norm:
        out += [(f"{p}.q_norm.weight", (HEAD_DIM,), "norm"), (f"{p}.k_norm.weight", (HEAD_DIM,), "norm")]
    return out


def _qwen_family(vocab: int, bias: bool, qk_norm: bool, moe: bool) -> list[tuple[str, Shape, str]]:
    out = [("model.embed_tokens.weight", (vocab, HIDDEN), "linear")]
    for i in range(LAYERS):
        p = f"model.layers.{i}"
        out += [(f"{p}.input_layernorm.weight", (HIDDEN,), "norm"),
                (f"{p}.post_attention_layernorm.weight", (HIDDEN,), "norm")]
        out += _qwen_attention(f"{p}.self_attn", bias, qk_norm)
        if moe:
            out.append((f"{p}.mlp.gate.weight", (EXPERTS, HIDDEN), "linear"))
            for e in range(EXPERTS):
                out += _mlp(f"{p}.mlp.experts.{e}", MOE_INTER)
        else:
            out += _mlp(f"{p}.mlp", INTER)
    out += [("model.norm.weight", (HIDDEN,), "norm"), ("lm_head.weight", (vocab, HIDDEN), "linear")]
    return out


def _llada2(vocab: int) -> list[tuple[str, Shape, str]]:
    qkv = (HEADS + 2 * KV_HEADS) * HEAD_DIM  # fused q, k, v rows
    out = [("model.word_embeddings.weight", (vocab, HIDDEN), "linear")]
    for i in range(LAYERS):
        p = f"model.layers.{i}"
        out += [(f"{p}.input_layernorm.weight", (HIDDEN,), "norm"),
                (f"{p}.post_attention_layernorm.weight", (HIDDEN,), "norm"),
                (f"{p}.attention.query_key_value.weight", (qkv, HIDDEN), "linear"),
                (f"{p}.attention.query_layernorm.weight", (HEAD_DIM,), "norm"),
                (f"{p}.attention.key_layernorm.weight", (HEAD_DIM,), "norm"),
                (f"{p}.attention.dense.weight", (HIDDEN, HEADS * HEAD_DIM), "linear")]
        if i < 1:  # first_k_dense_replace = 1
            out += _mlp(f"{p}.mlp", INTER)
            continue
        out += [(f"{p}.mlp.gate.weight", (EXPERTS, HIDDEN), "linear"),
                (f"{p}.mlp.gate.expert_bias", (EXPERTS,), "expert_bias")]
        for e in range(EXPERTS):
            out += _mlp(f"{p}.mlp.experts.{e}", MOE_INTER)
        out += _mlp(f"{p}.mlp.shared_experts", MOE_INTER * 1)  # num_shared_experts = 1
    out += [("model.norm.weight", (HIDDEN,), "norm"), ("lm_head.weight", (vocab, HIDDEN), "linear")]
    return out


def _llada(vocab: int) -> list[tuple[str, Shape, str]]:
    kv = KV_HEADS * HEAD_DIM
    out = [("model.transformer.wte.weight", (vocab, HIDDEN), "linear")]
    for i in range(LAYERS):
        p = f"model.transformer.blocks.{i}"
        out += [(f"{p}.attn_norm.weight", (HIDDEN,), "norm"), (f"{p}.ff_norm.weight", (HIDDEN,), "norm"),
                (f"{p}.q_proj.weight", (HIDDEN, HIDDEN), "linear"), (f"{p}.k_proj.weight", (kv, HIDDEN), "linear"),
                (f"{p}.v_proj.weight", (kv, HIDDEN), "linear"), (f"{p}.attn_out.weight", (HIDDEN, HIDDEN), "linear"),
                (f"{p}.ff_proj.weight", (INTER, HIDDEN), "linear"), (f"{p}.up_proj.weight", (INTER, HIDDEN), "linear"),
                (f"{p}.ff_out.weight", (HIDDEN, INTER), "linear")]
    out += [("model.transformer.ln_f.weight", (HIDDEN,), "norm"),
            ("model.transformer.ff_out.weight", (vocab, HIDDEN), "linear")]
    return out


def tensor_specs(family: str, vocab: int) -> list[tuple[str, Shape, str]]:
    """(name, shape, init kind) for every tensor of a remote-code family, in a fixed order."""
    if family == "llada2":
        return _llada2(vocab)
    if family == "llada":
        return _llada(vocab)
    if family in ("dream", "fast_dllm_v2"):
        return _qwen_family(vocab, bias=True, qk_norm=False, moe=False)
    if family == "sdar":
        return _qwen_family(vocab, bias=False, qk_norm=True, moe=False)
    if family == "sdar_moe":
        return _qwen_family(vocab, bias=False, qk_norm=True, moe=True)
    raise ValueError(f"no weight recipe for family {family!r}")


def family_generator(family: str, seed: int) -> torch.Generator:
    """A CPU generator seeded from (family, seed) — stable across processes (crc32, not hash())."""
    return torch.Generator().manual_seed(zlib.crc32(f"{family}:{seed}".encode()) + seed)


def init_tensors(specs: list[tuple[str, Shape, str]], gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Initialise tensors in spec order: matrices N(0, 0.02), norms 1 + small noise,
    biases small, expert biases N(0, 0.1) so biased routing differs from plain routing."""
    out: dict[str, torch.Tensor] = {}
    for name, shape, kind in specs:
        noise = torch.randn(shape, generator=gen, dtype=torch.float32)
        if kind == "norm":
            out[name] = 1.0 + 0.01 * noise
        elif kind == "expert_bias":
            out[name] = 0.1 * noise
        else:  # linear / bias / embedding
            out[name] = 0.02 * noise
    return out
