"""Tensor names/shapes per family (real checkpoint names) and deterministic initialisation."""

from __future__ import annotations

import zlib

import torch

from diffulex.tiny.sizes import DEFAULT_SIZE, TinySize

# kind → how the tensor is initialised (see ``init_tensors``).
Shape = tuple[int, ...]


def _mlp(prefix: str, inter: int, hidden: int) -> list[tuple[str, Shape, str]]:
    return [
        (f"{prefix}.gate_proj.weight", (inter, hidden), "linear"),
        (f"{prefix}.up_proj.weight", (inter, hidden), "linear"),
        (f"{prefix}.down_proj.weight", (hidden, inter), "linear"),
    ]


def _qwen_attention(p: str, bias: bool, qk_norm: bool, s: TinySize) -> list[tuple[str, Shape, str]]:
    q, kv, hidden = s.heads * s.head_dim, s.kv_heads * s.head_dim, s.hidden
    out = [(f"{p}.q_proj.weight", (q, hidden), "linear"), (f"{p}.k_proj.weight", (kv, hidden), "linear"),
           (f"{p}.v_proj.weight", (kv, hidden), "linear"), (f"{p}.o_proj.weight", (hidden, q), "linear")]
    if bias:
        out += [(f"{p}.q_proj.bias", (q,), "bias"), (f"{p}.k_proj.bias", (kv,), "bias"),
                (f"{p}.v_proj.bias", (kv,), "bias")]
    if qk_norm:
        out += [(f"{p}.q_norm.weight", (s.head_dim,), "norm"), (f"{p}.k_norm.weight", (s.head_dim,), "norm")]
    return out


def _qwen_family(vocab: int, bias: bool, qk_norm: bool, moe: bool, s: TinySize) -> list[tuple[str, Shape, str]]:
    h = s.hidden
    out = [("model.embed_tokens.weight", (vocab, h), "linear")]
    for i in range(s.layers):
        p = f"model.layers.{i}"
        out += [(f"{p}.input_layernorm.weight", (h,), "norm"),
                (f"{p}.post_attention_layernorm.weight", (h,), "norm")]
        out += _qwen_attention(f"{p}.self_attn", bias, qk_norm, s)
        if moe:
            out.append((f"{p}.mlp.gate.weight", (s.experts, h), "linear"))
            for e in range(s.experts):
                out += _mlp(f"{p}.mlp.experts.{e}", s.moe_inter, h)
        else:
            out += _mlp(f"{p}.mlp", s.inter, h)
    out += [("model.norm.weight", (h,), "norm"), ("lm_head.weight", (vocab, h), "linear")]
    return out


def _llada2(vocab: int, s: TinySize) -> list[tuple[str, Shape, str]]:
    h, d = s.hidden, s.head_dim
    qkv = (s.heads + 2 * s.kv_heads) * d  # fused q, k, v rows
    out = [("model.word_embeddings.weight", (vocab, h), "linear")]
    for i in range(s.layers):
        p = f"model.layers.{i}"
        out += [(f"{p}.input_layernorm.weight", (h,), "norm"),
                (f"{p}.post_attention_layernorm.weight", (h,), "norm"),
                (f"{p}.attention.query_key_value.weight", (qkv, h), "linear"),
                (f"{p}.attention.query_layernorm.weight", (d,), "norm"),
                (f"{p}.attention.key_layernorm.weight", (d,), "norm"),
                (f"{p}.attention.dense.weight", (h, s.heads * d), "linear")]
        if i < 1:  # first_k_dense_replace = 1
            out += _mlp(f"{p}.mlp", s.inter, h)
            continue
        out += [(f"{p}.mlp.gate.weight", (s.experts, h), "linear"),
                (f"{p}.mlp.gate.expert_bias", (s.experts,), "expert_bias")]
        for e in range(s.experts):
            out += _mlp(f"{p}.mlp.experts.{e}", s.moe_inter, h)
        out += _mlp(f"{p}.mlp.shared_experts", s.moe_inter * 1, h)  # num_shared_experts = 1
    out += [("model.norm.weight", (h,), "norm"), ("lm_head.weight", (vocab, h), "linear")]
    return out


def _llada(vocab: int, s: TinySize) -> list[tuple[str, Shape, str]]:
    h, q, kv = s.hidden, s.heads * s.head_dim, s.kv_heads * s.head_dim
    out = [("model.transformer.wte.weight", (vocab, h), "linear")]
    for i in range(s.layers):
        p = f"model.transformer.blocks.{i}"
        out += [(f"{p}.attn_norm.weight", (h,), "norm"), (f"{p}.ff_norm.weight", (h,), "norm"),
                (f"{p}.q_proj.weight", (q, h), "linear"), (f"{p}.k_proj.weight", (kv, h), "linear"),
                (f"{p}.v_proj.weight", (kv, h), "linear"), (f"{p}.attn_out.weight", (h, q), "linear"),
                (f"{p}.ff_proj.weight", (s.inter, h), "linear"), (f"{p}.up_proj.weight", (s.inter, h), "linear"),
                (f"{p}.ff_out.weight", (h, s.inter), "linear")]
    out += [("model.transformer.ln_f.weight", (h,), "norm"),
            ("model.transformer.ff_out.weight", (vocab, h), "linear")]
    return out


def tensor_specs(family: str, vocab: int, size: TinySize = DEFAULT_SIZE) -> list[tuple[str, Shape, str]]:
    """(name, shape, init kind) for every tensor of a remote-code family, in a fixed order."""
    if family == "llada2":
        return _llada2(vocab, size)
    if family == "llada":
        return _llada(vocab, size)
    if family in ("dream", "fast_dllm_v2"):
        return _qwen_family(vocab, bias=True, qk_norm=False, moe=False, s=size)
    if family == "sdar":
        return _qwen_family(vocab, bias=False, qk_norm=True, moe=False, s=size)
    if family == "sdar_moe":
        return _qwen_family(vocab, bias=False, qk_norm=True, moe=True, s=size)
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
