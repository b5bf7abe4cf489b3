"""llada, dream, sdar, sdar_moe and fast_dllm_v2 load their tiny checkpoints (real names) and
equal a dense reference of the published architecture written from the raw weight dict."""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from diffulex.config.checkpoint import load_hf_config
from diffulex.layers.attention_metadata import AttentionMetadata
from diffulex.layers.parallel import TPGroup
from diffulex.models.weights import iter_checkpoint
from diffulex.registry import AutoModel
from diffulex.tiny import ensure_tiny_checkpoint

B = 4  # block length of the block-causal runs

QWEN_NAMES = dict(embed="model.embed_tokens.weight", layer="model.layers.{i}", q="self_attn.q_proj",
                  k="self_attn.k_proj", v="self_attn.v_proj", o="self_attn.o_proj", q_norm="self_attn.q_norm",
                  k_norm="self_attn.k_norm", norm1="input_layernorm", norm2="post_attention_layernorm",
                  mlp=("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"), norm="model.norm.weight",
                  head="lm_head.weight")
LLADA_NAMES = dict(embed="model.transformer.wte.weight", layer="model.transformer.blocks.{i}", q="q_proj",
                   k="k_proj", v="v_proj", o="attn_out", q_norm="-", k_norm="-", norm1="attn_norm",
                   norm2="ff_norm", mlp=("ff_proj", "up_proj", "ff_out"), norm="model.transformer.ln_f.weight",
                   head="model.transformer.ff_out.weight")


def dims(family: str, cfg: dict) -> dict:
    """The reference's sizes, read from config.json under each family's own field names."""
    if family == "llada":
        return dict(layers=cfg["n_layers"], hq=cfg["n_heads"], hkv=cfg["n_kv_heads"],
                    d=cfg["d_model"] // cfg["n_heads"], eps=cfg["rms_norm_eps"], theta=cfg["rope_theta"],
                    names=LLADA_NAMES)
    return dict(layers=cfg["num_hidden_layers"], hq=cfg["num_attention_heads"], hkv=cfg["num_key_value_heads"],
                d=cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"],
                eps=cfg["rms_norm_eps"], theta=cfg["rope_theta"], names=QWEN_NAMES,
                top_k=cfg.get("num_experts_per_tok"), norm_topk=cfg.get("norm_topk_prob"))


# ----- dense reference, straight from the weight dict -----

def rms(x, weight, eps):
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rope(x, pos, theta):
    d = x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2).float() / d)  # float32, as the modeling code
    freqs = pos[:, None].float() * inv_freq  # [L, d/2]
    emb = torch.cat([freqs, freqs], -1)
    cos, sin = emb.cos()[:, None], emb.sin()[:, None]  # [L, 1, d]
    return x * cos + torch.cat([-x[..., d // 2:], x[..., : d // 2]], -1) * sin


def lin(x, w, name):
    return F.linear(x, w[f"{name}.weight"], w.get(f"{name}.bias"))  # bias where the checkpoint has one


def swiglu(x, w, gate, up, down):
    return lin(F.silu(lin(x, w, gate)) * lin(x, w, up), w, down)


def qwen_moe(x, w, p, dm):
    """Softmax top-k MoE computed token by token, plus the optional sigmoid-gated shared expert."""
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        probs = torch.softmax(w[f"{p}.gate.weight"] @ x[t], -1)
        top, ids = probs.topk(dm["top_k"])
        top = top / top.sum() if dm["norm_topk"] else top
        for e, we in zip(ids.tolist(), top):
            out[t] += we * swiglu(x[t], w, *(f"{p}.experts.{e}.{n}_proj" for n in ("gate", "up", "down")))
    if f"{p}.shared_expert_gate.weight" in w:
        shared = swiglu(x, w, *(f"{p}.shared_expert.{n}_proj" for n in ("gate", "up", "down")))
        out = out + torch.sigmoid(lin(x, w, f"{p}.shared_expert_gate")) * shared
    return out


def reference_logits(w, dm, ids, mask):
    """ids: [L]; mask: [L, L] bool (query, key)."""
    n, eps, d, hq, hkv = dm["names"], dm["eps"], dm["d"], dm["hq"], dm["hkv"]
    pos, L = torch.arange(len(ids)), len(ids)
    h = w[n["embed"]][ids]
    for i in range(dm["layers"]):
        p = n["layer"].format(i=i)
        x = rms(h, w[f"{p}.{n['norm1']}.weight"], eps)
        q, k, v = (lin(x, w, f"{p}.{n[c]}").view(L, -1, d) for c in "qkv")
        if f"{p}.{n['q_norm']}.weight" in w:  # SDAR / Qwen3 per-head q/k norm
            q, k = rms(q, w[f"{p}.{n['q_norm']}.weight"], eps), rms(k, w[f"{p}.{n['k_norm']}.weight"], eps)
        q, k = rope(q, pos, dm["theta"]), rope(k, pos, dm["theta"])
        k, v = k.repeat_interleave(hq // hkv, 1), v.repeat_interleave(hq // hkv, 1)
        att = (torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(d)).masked_fill(~mask, float("-inf")).softmax(-1)
        h = h + lin(torch.einsum("hqk,khd->qhd", att, v).reshape(L, -1), w, f"{p}.{n['o']}")
        x = rms(h, w[f"{p}.{n['norm2']}.weight"], eps)
        is_moe = f"{p}.mlp.gate.weight" in w
        h = h + (qwen_moe(x, w, f"{p}.mlp", dm) if is_moe else swiglu(x, w, *(f"{p}.{m}" for m in n["mlp"])))
    return F.linear(rms(h, w[n["norm"]], eps), w[n["head"]])


def mask_of(n, block):
    i = torch.arange(n)
    return torch.ones(n, n, dtype=torch.bool) if block is None else i[None, :] < (i[:, None] // block + 1) * block


# ----- helpers -----

def tiny(family):
    path = ensure_tiny_checkpoint(family)
    cfg = json.loads((Path(path) / "config.json").read_text())
    return path, cfg, {k: v.float() for k, v in iter_checkpoint(path)}


def build(family, hf_config, weights=None, path=None, tp=TPGroup()):
    model = AutoModel.get(family)(hf_config, tp=tp, dtype=torch.float32)
    model.load_weights(path) if weights is None else model.load_named_tensors(weights.items())
    return model


def run(model, ids, meta, kv_caches=None):
    with torch.no_grad():
        return model.compute_logits(model(ids, meta.positions, meta, kv_caches)[meta.logits_indices])


def random_ids(vocab, n, seed=0):
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", autouse=True)
def _tiny_root(tiny_root):
    """Reuse the session's tiny checkpoints (ensure_tiny_checkpoint reads DIFFULEX_TINY_ROOT)."""


# ----- tests -----

@pytest.mark.parametrize("family,block", [("llada", B), ("llada", None), ("dream", None), ("dream", B),
                                          ("sdar", B), ("sdar_moe", B), ("fast_dllm_v2", B)])
def test_tiny_checkpoint_matches_dense_reference(family, block):
    path, cfg, w = tiny(family)
    model = build(family, load_hf_config(path), path=path)
    vocab = w[dims(family, cfg)["names"]["embed"]].shape[0]
    a, b = random_ids(vocab, 11, 1), random_ids(vocab, 6, 2)
    logits = run(model, torch.cat([a, b]), AttentionMetadata.for_dense([11, 6], block_size=block))
    assert logits.dtype == torch.float32 and logits.shape == (17, vocab)
    dm = dims(family, cfg)
    torch.testing.assert_close(logits[:11], reference_logits(w, dm, a, mask_of(11, block)), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits[11:], reference_logits(w, dm, b, mask_of(6, block)), atol=1e-4, rtol=1e-4)


def test_sdar_moe_dense_layers_and_shared_expert_match_reference():
    """``mlp_only_layers`` makes layer 0 dense; a Qwen2-MoE-style shared expert joins layer 1."""
    _, cfg, w = tiny("sdar_moe")
    cfg = dict(cfg, mlp_only_layers=[0], shared_expert_intermediate_size=24)
    w = {k: v for k, v in w.items() if not k.startswith("model.layers.0.mlp.")}
    g, h = torch.Generator().manual_seed(5), cfg["hidden_size"]
    for p, width in (("model.layers.0.mlp", cfg["intermediate_size"]), ("model.layers.1.mlp.shared_expert", 24)):
        w |= {f"{p}.gate_proj.weight": 0.1 * torch.randn(width, h, generator=g),
              f"{p}.up_proj.weight": 0.1 * torch.randn(width, h, generator=g),
              f"{p}.down_proj.weight": 0.1 * torch.randn(h, width, generator=g)}
    w["model.layers.1.mlp.shared_expert_gate.weight"] = 0.1 * torch.randn(1, h, generator=g)
    model = build("sdar_moe", cfg, weights=w)
    ids = random_ids(cfg["vocab_size"], 10, 3)
    logits = run(model, ids, AttentionMetadata.for_dense([10], block_size=B))
    torch.testing.assert_close(logits, reference_logits(w, dims("sdar_moe", cfg), ids, mask_of(10, B)),
                               atol=1e-4, rtol=1e-4)


def test_cached_block_equals_uncached():
    """Prefill block 0 writing KV into pages, then block 1 against the cache (SDAR)."""
    path, cfg, _ = tiny("sdar")
    model = build("sdar", load_hf_config(path), path=path)
    ids = random_ids(cfg["vocab_size"], 8, 4)
    full = run(model, ids, AttentionMetadata.for_dense([8], block_size=B))
    page_size, pages = 2, torch.tensor([3, 0, 5, 1])
    caches = [(torch.zeros(6, page_size, hkv, d), torch.zeros(6, page_size, hkv, d))
              for hkv, d in model.kv_cache_spec()]

    def meta(lo, ctx):
        pos = torch.arange(lo, lo + B)
        return AttentionMetadata(
            cu_seqlens_q=torch.tensor([0, B]), positions=pos, context_lens=torch.tensor([ctx]), page_table=pages[None],
            slot_mapping=pages[pos // page_size] * page_size + pos % page_size, key_lo=torch.zeros_like(pos),
            key_hi=(pos // B + 1) * B, cache_only=torch.tensor([False]), logits_indices=torch.arange(B),
            page_size=page_size)

    torch.testing.assert_close(run(model, ids[:B], meta(0, 0), caches), full[:B], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(run(model, ids[B:], meta(B, B), caches), full[B:], atol=1e-5, rtol=1e-5)


def test_kv_cache_spec_per_layer():
    path, cfg, _ = tiny("sdar")
    assert AutoModel.get("sdar")(load_hf_config(path), dtype=torch.float32).kv_cache_spec() == \
        [(cfg["num_key_value_heads"], cfg["head_dim"])] * cfg["num_hidden_layers"]


def test_loading_rejects_other_family_missing_and_misshapen():
    dream_path, _, w = tiny("dream")
    model = AutoModel.get("dream")(load_hf_config(dream_path), dtype=torch.float32)
    foreign = r"unexpected checkpoint tensor 'model\.(word_embeddings|layers\.\d+\.attention)"
    with pytest.raises(ValueError, match=foreign):
        model.load_weights(ensure_tiny_checkpoint("llada2"))
    with pytest.raises(ValueError, match=r"missing.*model\.layers\.1\.self_attn\.k_proj\.bias"):
        model.load_named_tensors((k, v) for k, v in w.items() if k != "model.layers.1.self_attn.k_proj.bias")
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.up_proj\.weight.*shape"):
        model.load_named_tensors(dict(w, **{"model.layers.0.mlp.up_proj.weight": torch.zeros(3, 3)}).items())


@pytest.mark.parametrize("family,flag,head,embed", [
    ("dream", "tie_word_embeddings", "lm_head.weight", "model.embed_tokens.weight"),
    ("llada", "weight_tying", "model.transformer.ff_out.weight", "model.transformer.wte.weight")])
def test_tied_head_uses_the_embedding(family, flag, head, embed):
    _, cfg, w = tiny(family)
    model = build(family, dict(cfg, **{flag: True}), weights={k: v for k, v in w.items() if k != head})
    hidden = torch.randn(3, model.dims.hidden_size)
    torch.testing.assert_close(model.compute_logits(hidden), hidden @ w[embed].T)


# ----- tensor parallelism: 2 CPU ranks over gloo reproduce the single-rank logits -----

def tp_logits(rank: int, size: int, path: str) -> torch.Tensor:
    model = build("sdar_moe", load_hf_config(path), path=path, tp=TPGroup(rank, size))
    meta = AttentionMetadata.for_dense([11], block_size=B)
    return run(model, random_ids(model.dims.vocab_size, 11, 6), meta)


def tp_worker(rank: int, size: int, port: int, path: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=size)
    try:
        torch.save(tp_logits(rank, size, path), f"{out}/logits_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_tp2_matches_tp1(tmp_path):
    path = str(ensure_tiny_checkpoint("sdar_moe"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(tp_worker, args=(2, port, path, str(tmp_path)), nprocs=2, join=True)
    expected = tp_logits(0, 1, path)
    for rank in range(2):
        torch.testing.assert_close(torch.load(tmp_path / f"logits_rank{rank}.pt"), expected, atol=1e-5, rtol=1e-5)


def test_rope_tables_are_the_official_float32_computation():
    from diffulex.layers.rotary import RotaryEmbedding

    r = RotaryEmbedding(head_dim=64, rotary_dim=32, max_position=4096, base=600000.0)
    # the published modeling code: int64 arange -> float32, base ** (.. / dim), fp32 product, fp32 cos/sin
    inv_freq = 1.0 / (600000.0 ** (torch.arange(0, 32, 2, dtype=torch.int64).float() / 32))
    freqs = torch.arange(4096).float()[:, None] * inv_freq[None, :]
    assert torch.equal(r.cos_cache, freqs.cos()) and torch.equal(r.sin_cache, freqs.sin())
    f64 = torch.outer(torch.arange(4096, dtype=torch.float64),
                      1.0 / (600000.0 ** (torch.arange(0, 32, 2, dtype=torch.float64) / 32)))
    assert not torch.equal(r.cos_cache, f64.cos().float())  # the float64 tables are another function
