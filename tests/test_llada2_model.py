"""LLaDA2MoeForDiffusion equals a dense reference of the published architecture, cached or not."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from diffulex.layers.attention_metadata import AttentionMetadata
from diffulex.models.llada2 import LLaDA2MoeForDiffusion
from diffulex.models.weights import iter_checkpoint
from diffulex.registry import AutoModel

CONFIG = dict(
    vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, max_position_embeddings=128, rms_norm_eps=1e-6, rope_theta=600000.0,
    partial_rotary_factor=0.5, use_qk_norm=True, use_qkv_bias=True, use_bias=True, num_experts=8,
    num_experts_per_tok=2, num_shared_experts=1, moe_intermediate_size=16, first_k_dense_replace=1,
    n_group=4, topk_group=2, routed_scaling_factor=2.5, score_function="sigmoid", norm_topk_prob=True,
    tie_word_embeddings=False, model_type="llada2_moe",
)
B = 4  # block length


def random_weights(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Raw tensors under the real checkpoint names."""
    g = torch.Generator().manual_seed(seed)
    h, d, hq, hkv = cfg["hidden_size"], cfg["head_dim"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    rnd = lambda *s, std=0.1: torch.randn(*s, generator=g) * std  # noqa: E731
    norm = lambda n: 1 + rnd(n)  # noqa: E731
    w = {"model.word_embeddings.weight": rnd(cfg["vocab_size"], h, std=1.0), "model.norm.weight": norm(h),
         "lm_head.weight": rnd(cfg["vocab_size"], h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        w |= {f"{p}.input_layernorm.weight": norm(h), f"{p}.post_attention_layernorm.weight": norm(h),
              f"{p}.attention.query_key_value.weight": rnd((hq + 2 * hkv) * d, h, std=0.3),
              f"{p}.attention.query_key_value.bias": rnd((hq + 2 * hkv) * d),
              f"{p}.attention.query_layernorm.weight": norm(d), f"{p}.attention.key_layernorm.weight": norm(d),
              f"{p}.attention.dense.weight": rnd(h, hq * d), f"{p}.attention.dense.bias": rnd(h)}
        mlps = [(f"{p}.mlp", cfg["intermediate_size"])] if i < cfg["first_k_dense_replace"] else (
            [(f"{p}.mlp.experts.{e}", cfg["moe_intermediate_size"]) for e in range(cfg["num_experts"])]
            + [(f"{p}.mlp.shared_experts", cfg["moe_intermediate_size"] * cfg["num_shared_experts"])])
        if i >= cfg["first_k_dense_replace"]:
            w |= {f"{p}.mlp.gate.weight": rnd(cfg["num_experts"], h, std=0.5),
                  f"{p}.mlp.gate.expert_bias": rnd(cfg["num_experts"], std=0.2)}
        for name, width in mlps:
            w |= {f"{name}.gate_proj.weight": rnd(width, h, std=0.2), f"{name}.up_proj.weight": rnd(width, h, std=0.2),
                  f"{name}.down_proj.weight": rnd(h, width, std=0.2)}
    return w


# ----- dense reference of the published architecture, straight from the weight dict -----

def rms(x, weight, eps):
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rope(x, pos, cfg):
    rot = int(cfg["head_dim"] * cfg["partial_rotary_factor"])
    # float32 angles, as the published modeling code computes them
    inv_freq = 1.0 / cfg["rope_theta"] ** (torch.arange(0, rot, 2).float() / rot)
    freqs = pos[:, None].float() * inv_freq  # [L, rot/2]
    emb = torch.cat([freqs, freqs], -1)
    cos, sin = emb.cos()[:, None], emb.sin()[:, None]  # [L, 1, rot]
    xr, xp = x[..., :rot], x[..., rot:]
    rotated = torch.cat([-xr[..., rot // 2:], xr[..., : rot // 2]], -1)
    return torch.cat([xr * cos + rotated * sin, xp], -1)


def mlp(x, w, name):
    return F.linear(F.silu(F.linear(x, w[f"{name}.gate_proj.weight"])) * F.linear(x, w[f"{name}.up_proj.weight"]),
                    w[f"{name}.down_proj.weight"])


def moe(x, w, p, cfg):
    e_total, k = cfg["num_experts"], cfg["num_experts_per_tok"]
    per_group = e_total // cfg["n_group"]
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        s = torch.sigmoid(w[f"{p}.gate.weight"] @ x[t])
        b = s + w[f"{p}.gate.expert_bias"]
        groups = sorted(range(cfg["n_group"]),
                        key=lambda g: -b[g * per_group:(g + 1) * per_group].topk(2).values.sum().item())
        kept = groups[: cfg["topk_group"]]
        cand = [e for e in range(e_total) if e // per_group in kept]
        chosen = sorted(cand, key=lambda e: -b[e].item())[:k]
        weights = s[chosen] / s[chosen].sum() * cfg["routed_scaling_factor"]
        for e, we in zip(chosen, weights):
            out[t] += we * mlp(x[t], w, f"{p}.experts.{e}")
    return out + mlp(x, w, f"{p}.shared_experts")


def reference_logits(w, cfg, ids, mask):
    """ids: [L]; mask: [L, L] bool (query, key)."""
    eps, d, hq, hkv = cfg["rms_norm_eps"], cfg["head_dim"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    pos = torch.arange(len(ids))
    h = w["model.word_embeddings.weight"][ids]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        x = rms(h, w[f"{p}.input_layernorm.weight"], eps)
        qkv = F.linear(x, w[f"{p}.attention.query_key_value.weight"], w[f"{p}.attention.query_key_value.bias"])
        q, k, v = qkv.view(len(ids), hq + 2 * hkv, d).split([hq, hkv, hkv], dim=1)
        q = rope(rms(q, w[f"{p}.attention.query_layernorm.weight"], eps), pos, cfg)
        k = rope(rms(k, w[f"{p}.attention.key_layernorm.weight"], eps), pos, cfg)
        k, v = k.repeat_interleave(hq // hkv, 1), v.repeat_interleave(hq // hkv, 1)
        att = (torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(d)).masked_fill(~mask, float("-inf")).softmax(-1)
        o = torch.einsum("hqk,khd->qhd", att, v).reshape(len(ids), -1)
        h = h + F.linear(o, w[f"{p}.attention.dense.weight"], w[f"{p}.attention.dense.bias"])
        x = rms(h, w[f"{p}.post_attention_layernorm.weight"], eps)
        h = h + (mlp(x, w, f"{p}.mlp") if i < cfg["first_k_dense_replace"] else moe(x, w, f"{p}.mlp", cfg))
    return F.linear(rms(h, w["model.norm.weight"], eps), w["lm_head.weight"])


def block_causal_mask(n, block):
    i = torch.arange(n)
    return i[None, :] < ((i[:, None] // block + 1) * block)


# ----- tests -----

@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    w = random_weights(CONFIG)
    path = tmp_path_factory.mktemp("llada2")
    save_file(w, str(path / "model.safetensors"))
    model = AutoModel.get("llada2")(CONFIG, dtype=torch.float32)
    model.load_weights(path)
    return model, w


def run(model, ids, meta, kv_caches=None):
    with torch.no_grad():
        hidden = model(ids, meta.positions, meta, kv_caches)
        return model.compute_logits(hidden[meta.logits_indices])


def test_uncached_block_causal_matches_dense_reference(loaded):
    model, w = loaded
    ids = torch.randint(0, CONFIG["vocab_size"], (13,), generator=torch.Generator().manual_seed(1))
    logits = run(model, ids, AttentionMetadata.for_dense([13], block_size=B))
    assert logits.dtype == torch.float32 and logits.shape == (13, CONFIG["vocab_size"])
    torch.testing.assert_close(logits, reference_logits(w, CONFIG, ids, block_causal_mask(13, B)),
                               atol=1e-5, rtol=1e-5)


def test_varlen_batch_and_inputs_embeds(loaded):
    model, w = loaded
    gen = torch.Generator().manual_seed(2)
    a, b = torch.randint(0, 64, (9,), generator=gen), torch.randint(0, 64, (6,), generator=gen)
    meta = AttentionMetadata.for_dense([9, 6], block_size=B)
    logits = run(model, torch.cat([a, b]), meta)
    torch.testing.assert_close(logits[:9], reference_logits(w, CONFIG, a, block_causal_mask(9, B)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits[9:], reference_logits(w, CONFIG, b, block_causal_mask(6, B)), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        via_embeds = model.compute_logits(model(None, meta.positions, meta, inputs_embeds=model.embed(torch.cat([a, b]))))
    torch.testing.assert_close(via_embeds, logits)


def paged_meta(positions, ctx, pages, cache_only=False, page_size=4, write=True, seq_len=None):
    """One-sequence metadata over ``pages`` (block-causal, clamped to ``seq_len``)."""
    pos = torch.tensor(positions)
    hi = (pos // B + 1) * B if seq_len is None else torch.clamp((pos // B + 1) * B, max=seq_len)
    slots = pages[pos // page_size] * page_size + pos % page_size if write else torch.full_like(pos, -1)
    meta = AttentionMetadata(
        cu_seqlens_q=torch.tensor([0, len(positions)]), positions=pos, context_lens=torch.tensor([ctx]),
        page_table=pages[None], slot_mapping=slots, key_lo=torch.zeros_like(pos), key_hi=hi,
        cache_only=torch.tensor([cache_only]), logits_indices=torch.arange(len(positions)), page_size=page_size)
    meta.validate()
    return meta


def test_cached_formulation_equals_full_recompute(loaded):
    model, _ = loaded
    ids = torch.randint(0, 64, (13,), generator=torch.Generator().manual_seed(3))
    full = run(model, ids, AttentionMetadata.for_dense([13], block_size=B))
    hkv, d = CONFIG["num_key_value_heads"], CONFIG["head_dim"]
    caches = [(torch.randn(9, 4, hkv, d), torch.randn(9, 4, hkv, d)) for _ in range(CONFIG["num_hidden_layers"])]
    pages = torch.tensor([7, 2, 5, 0])  # non-contiguous; the last page is partially filled
    # Prefill blocks 0-1 (writing KV), then block 2 against the cache, then the partial tail block.
    prefill = run(model, ids[:8], paged_meta(range(8), 0, pages), caches)
    torch.testing.assert_close(prefill, full[:8], atol=1e-5, rtol=1e-5)
    block = run(model, ids[8:12], paged_meta(range(8, 12), 8, pages), caches)
    torch.testing.assert_close(block, full[8:12], atol=1e-5, rtol=1e-5)
    tail = run(model, ids[12:], paged_meta([12], 12, pages, seq_len=13), caches)
    torch.testing.assert_close(tail, full[12:], atol=1e-5, rtol=1e-5)
    # Dual-cache mode: block 2 rewrites its entries in place and attends to the cache only.
    for k_cache, _ in caches:  # make the entries of block 2 stale first
        k_cache[5].normal_()
    dual = run(model, ids[8:12], paged_meta(range(8, 12), 13, pages, cache_only=True, seq_len=13), caches)
    torch.testing.assert_close(dual, full[8:12], atol=1e-5, rtol=1e-5)


def test_registered_and_tp_defaults():
    assert AutoModel.get("llada2") is LLaDA2MoeForDiffusion


def test_load_rejects_unexpected_missing_and_misshapen(tmp_path):
    w = random_weights(CONFIG)
    model = LLaDA2MoeForDiffusion(CONFIG, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.experts\.99\.gate_proj\.weight"):
        model.load_named_tensors(list(w.items()) + [("model.layers.1.mlp.experts.99.gate_proj.weight", torch.zeros(1))])
    with pytest.raises(ValueError, match=r"model\.layers\.2\.attention\.dense\.bias"):
        model.load_named_tensors([(k, v) for k, v in w.items() if k != "model.layers.2.attention.dense.bias"])
    bad = dict(w, **{"model.layers.0.mlp.up_proj.weight": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.up_proj\.weight.*shape"):
        model.load_named_tensors(bad.items())
    # The DeepSeek-style alias of the router bias loads into the same parameter.
    aliased = {k.replace("expert_bias", "e_score_correction_bias"): v for k, v in w.items()}
    model.load_named_tensors(aliased.items())
    torch.testing.assert_close(model.model.layers[1].mlp.gate.expert_bias, w["model.layers.1.mlp.gate.expert_bias"])


def test_tied_head_shares_the_embedding():
    cfg = dict(CONFIG, tie_word_embeddings=True)
    w = random_weights(cfg)
    del w["lm_head.weight"]
    model = LLaDA2MoeForDiffusion(cfg, dtype=torch.float32)
    model.load_named_tensors(w.items())
    torch.testing.assert_close(model.lm_head.weight, w["model.word_embeddings.weight"])


def test_loads_tiny_checkpoint_and_matches_reference(tmp_path):
    tiny = pytest.importorskip("diffulex.tiny")
    path = tiny.write_tiny_checkpoint("llada2", tmp_path / "llada2")
    assert (path / "model.safetensors.index.json").exists()
    checkpoint = pytest.importorskip("diffulex.config.checkpoint")
    hf_config = checkpoint.load_hf_config(path)  # the path users hit
    cfg = json.loads((path / "config.json").read_text())
    model = LLaDA2MoeForDiffusion(hf_config, dtype=torch.float32)
    model.load_weights(path)
    w = {k: v.float() for k, v in iter_checkpoint(path)}
    full_cfg = dict(cfg)
    full_cfg.setdefault("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])
    ids = torch.randint(0, cfg["vocab_size"], (10,), generator=torch.Generator().manual_seed(4))
    logits = run(model, ids, AttentionMetadata.for_dense([10], block_size=B))
    ref = reference_logits_nobias(w, full_cfg, ids, block_causal_mask(10, B))
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)


def reference_logits_nobias(w, cfg, ids, mask):
    """The reference with zero attention biases filled in (the tiny checkpoint has none)."""
    w = dict(w)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}.attention"
        w.setdefault(f"{p}.query_key_value.bias", torch.zeros(w[f"{p}.query_key_value.weight"].shape[0]))
        w.setdefault(f"{p}.dense.bias", torch.zeros(cfg["hidden_size"]))
    return reference_logits(w, cfg, ids, mask)
