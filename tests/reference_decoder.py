"""An independent, deliberately naive reference decoder for the block-diffusion strategies.

No KV cache, no paging, no batching: every step recomputes the whole canvas ``[0, L)`` with
an explicit boolean attention mask through a dense model built straight from the raw weight
dict (the reference architecture of ``tests/test_llada2_model.py``; only its MoE is
vectorized here for speed, and :func:`check_fast_moe` pins it to the per-token original).

Greedy semantics (the engine's documented semantics for ``multi_bd`` and ``d2f``):

* canvas = prompt (P tokens) + masks; blocks of B tokens aligned at absolute position 0;
  the first block decoded is ``P // B`` (it holds the prompt tail, whose tokens never change);
* attention: query p sees key k iff ``k < key_hi(p)`` with ``key_hi(p) = (p//B + 1)·B``
  (multi_bd, block-causal, prompt included), and for d2f ``key_hi(p) = P`` when p < P;
* per masked slot: token = argmax of the fp32 logits with the mask id and every id ≥ the
  tokenizer vocabulary size set to −inf (ties → lowest id); confidence =
  softmax(unmodified logits)[token];
* up to K in-flight blocks; per step: maybe add one block, one forward, accept per block
  (threshold τ strict; the first block — or one whose predecessor is semi-complete — always
  accepts at least its most confident mask), commit completed leading blocks and apply the
  stop rule. NFE = number of forwards.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from test_llada2_model import mlp, moe, rms, rope  # the dense reference architecture

LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (ids [L], mask [L, L] bool) -> [L, V] fp32


# ----------------------------------------------------------------------------- the model

def fast_moe(x: torch.Tensor, w: dict, p: str, cfg: dict) -> torch.Tensor:
    """Vectorized equivalent of ``test_llada2_model.moe`` (same routing, dense expert compute)."""
    e_total, k, n_group = cfg["num_experts"], cfg["num_experts_per_tok"], cfg["n_group"]
    per_group = e_total // n_group
    s = torch.sigmoid(x.float() @ w[f"{p}.gate.weight"].float().T)  # [T, E] (router in fp32)
    b = s + w[f"{p}.gate.expert_bias"].float()
    group_scores = b.view(-1, n_group, per_group).topk(2, dim=-1).values.sum(-1)  # [T, G]
    kept = group_scores.topk(cfg["topk_group"], dim=-1).indices
    group_keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, kept, True)
    expert_keep = group_keep.repeat_interleave(per_group, dim=1)
    chosen = b.masked_fill(~expert_keep, float("-inf")).topk(k, dim=-1).indices  # [T, k]
    sw = s.gather(1, chosen)
    sw = sw / sw.sum(-1, keepdim=True) * cfg["routed_scaling_factor"]
    dense_w = torch.zeros_like(s).scatter_(1, chosen, sw)  # [T, E]
    out = torch.zeros_like(x)
    for e in range(e_total):
        sel = dense_w[:, e] != 0
        if sel.any():
            out[sel] += dense_w[sel, e, None] * mlp(x[sel], w, f"{p}.experts.{e}")
    return out + mlp(x, w, f"{p}.shared_experts")


def dense_logits(w: dict, cfg: dict, ids: torch.Tensor, mask: torch.Tensor, moe_fn=fast_moe) -> torch.Tensor:
    """The reference forward of ``test_llada2_model.reference_logits`` (missing biases = 0)."""
    eps, hq, hkv = cfg["rms_norm_eps"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg.get("head_dim") or cfg["hidden_size"] // hq
    n = len(ids)
    pos = torch.arange(n)
    h = w["model.word_embeddings.weight"][ids]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        x = rms(h, w[f"{p}.input_layernorm.weight"], eps)
        qkv = F.linear(x, w[f"{p}.attention.query_key_value.weight"], w.get(f"{p}.attention.query_key_value.bias"))
        q, k, v = qkv.view(n, hq + 2 * hkv, d).split([hq, hkv, hkv], dim=1)
        q = rope(rms(q, w[f"{p}.attention.query_layernorm.weight"], eps), pos, dict(cfg, head_dim=d))
        k = rope(rms(k, w[f"{p}.attention.key_layernorm.weight"], eps), pos, dict(cfg, head_dim=d))
        k, v = k.repeat_interleave(hq // hkv, 1), v.repeat_interleave(hq // hkv, 1)
        att = (torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(d)).masked_fill(~mask, float("-inf")).softmax(-1)
        o = torch.einsum("hqk,khd->qhd", att, v).reshape(n, -1)
        h = h + F.linear(o, w[f"{p}.attention.dense.weight"], w.get(f"{p}.attention.dense.bias"))
        x = rms(h, w[f"{p}.post_attention_layernorm.weight"], eps)
        h = h + (mlp(x, w, f"{p}.mlp") if i < cfg["first_k_dense_replace"] else moe_fn(x, w, f"{p}.mlp", cfg))
    return F.linear(rms(h, w["model.norm.weight"], eps), w["lm_head.weight"]).float()


def load_dense_model(path: str | Path) -> tuple[dict, dict]:
    """(fp32 weight dict, config dict) of a LLaDA2 checkpoint, read with no engine code but the file reader."""
    from diffulex.models.weights import iter_checkpoint

    path = Path(path)
    cfg = json.loads((path / "config.json").read_text())
    w = {k: v.float() for k, v in iter_checkpoint(path)}
    return w, cfg


def make_logits_fn(w: dict, cfg: dict) -> LogitsFn:
    def fn(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return dense_logits(w, cfg, ids, mask)
    return fn


def check_fast_moe(w: dict, cfg: dict, n: int = 24, seed: int = 0) -> None:
    """The vectorized MoE equals the per-token reference MoE of test_llada2_model."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cfg["hidden_size"], generator=g)
    p = f"model.layers.{cfg['first_k_dense_replace']}.mlp"
    with torch.no_grad():
        torch.testing.assert_close(fast_moe(x, w, p, cfg), moe(x, w, p, cfg), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- masks / selection

def attention_mask(L: int, P: int, B: int, strategy: str) -> torch.Tensor:
    """[L, L] bool, True where query p may see key k."""
    p = torch.arange(L)
    key_hi = (p // B + 1) * B
    if strategy == "d2f":
        key_hi = torch.where(p < P, torch.full_like(p, P), key_hi)
    elif strategy != "multi_bd":
        raise ValueError(strategy)
    return torch.arange(L)[None, :] < key_hi[:, None]


def choose(logits: torch.Tensor, mask_id: int, vocab_limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(token, confidence) per row: argmax with mask id / ids ≥ vocab_limit banned; conf from raw softmax."""
    logits = logits.float()
    banned = logits.clone()
    banned[:, mask_id] = float("-inf")
    banned[:, vocab_limit:] = float("-inf")
    tok = banned.argmax(-1)
    conf = logits.softmax(-1).gather(1, tok[:, None])[:, 0]
    return tok, conf


# ----------------------------------------------------------------------------- the decoder

@dataclass
class Step:
    """What one step did (for tests that want to see the threshold path exercised)."""
    blocks: list[int]
    accepted: dict[int, list[int]] = field(default_factory=dict)  # position -> [token]
    mask_confidences: list[float] = field(default_factory=list)

    @property
    def n_accepted(self) -> int:
        return len(self.accepted)


@dataclass
class RefResult:
    token_ids: list[int]
    finish_reason: str
    nfe: int
    steps: list[Step]
    canvas: list[int]


def reference_decode(logits_fn: LogitsFn, prompt: Sequence[int], *, max_tokens: int, block_size: int,
                     mask_id: int, eos_ids: Sequence[int], vocab_limit: int, strategy: str = "multi_bd",
                     buffer_size: int = 1, accept_threshold: float = 0.9, add_block_threshold: float = 0.1,
                     semi_complete_threshold: float = 0.9, max_steps: int = 10_000) -> RefResult:
    P, G, B, K, tau = len(prompt), max_tokens, block_size, buffer_size, accept_threshold
    assert P >= 1 and G >= 1 and B >= 1 and K >= 1
    eos = set(int(e) for e in eos_ids)
    canvas: list[int] = [int(t) for t in prompt]
    inflight: list[int] = []  # block indices
    last_added = -1
    steps: list[Step] = []

    def add_block(b: int) -> None:
        nonlocal last_added
        end = (b + 1) * B
        while len(canvas) < end:
            canvas.append(mask_id)
        inflight.append(b)
        last_added = b

    def decided_fraction(b: int) -> float:
        return sum(1 for t in canvas[b * B:(b + 1) * B] if t != mask_id) / B if (b + 1) * B <= len(canvas) else 0.0

    add_block(P // B)
    nfe = 0
    while True:
        if len(steps) >= max_steps:
            raise RuntimeError("reference decoder did not terminate")
        # (1) maybe add one block (the first block was placed above; the check also runs on step 1)
        if len(inflight) < K and decided_fraction(last_added) >= add_block_threshold \
                and (last_added + 1) * B < P + G:
            add_block(last_added + 1)
        elif not inflight:  # cannot happen: a committed block either stops or leaves room to add
            raise AssertionError("no block in flight and none can be added")
        # (2) one forward over [0, L)
        L = (inflight[-1] + 1) * B
        assert len(canvas) == L
        ids = torch.tensor(canvas, dtype=torch.long)
        logits = logits_fn(ids, attention_mask(L, P, B, strategy))
        nfe += 1
        tok, conf = choose(logits, mask_id, vocab_limit)
        step = Step(blocks=list(inflight))
        # (3) per-block acceptance against the state before this step's decisions
        before = {b: decided_fraction(b) for b in inflight}
        accepted: dict[int, int] = {}
        for j, b in enumerate(inflight):
            masked = [q for q in range(b * B, (b + 1) * B) if canvas[q] == mask_id]
            if not masked:
                continue
            step.mask_confidences += [float(conf[q]) for q in masked]
            passing = [q for q in masked if float(conf[q]) > tau]
            must_accept = j == 0 or before[inflight[j - 1]] >= semi_complete_threshold
            if not passing and must_accept:
                best = max(float(conf[q]) for q in masked)
                passing = [min(q for q in masked if float(conf[q]) == best)]
            for q in passing:
                accepted[q] = int(tok[q])
        for q, t in accepted.items():
            canvas[q] = t
            step.accepted[q] = [t]
        steps.append(step)
        # (4) commit completed leading blocks, stop rule
        while inflight and all(t != mask_id for t in canvas[inflight[0] * B:(inflight[0] + 1) * B]):
            b = inflight.pop(0)
            end = (b + 1) * B
            generated = canvas[P:min(end, P + G)]
            hit = [i for i, t in enumerate(generated) if t in eos]
            if hit:
                return RefResult(generated[:hit[0] + 1], "eos", nfe, steps, canvas)
            if end >= P + G:
                return RefResult(canvas[P:P + G], "length", nfe, steps, canvas)


# ----------------------------------------------------------------------------- official LLaDA2 loop

def official_llada2_generate(logits_fn: LogitsFn, prompt: Sequence[int], *, gen_length: int, block_length: int,
                             threshold: float, mask_id: int, eos_id: int, vocab_limit: int,
                             steps: Optional[int] = None, minimal_topk: int = 1) -> tuple[list[int], int]:
    """A literal transcription of ``LLaDA2MoeModelLM.generate`` (see official-loops.md), greedy.

    The only adaptation: "greedy" picks argmax with the mask id and ids ≥ ``vocab_limit`` banned
    (the engine's documented rule) and the confidence is softmax(raw logits)[pick]. Returns
    (the returned tokens x[P:P+G] cut after the first EOS, number of forwards).
    """
    steps = block_length if steps is None else steps
    steps = min(steps, gen_length // minimal_topk)
    P = len(prompt)
    num_blocks = (P + gen_length + block_length - 1) // block_length
    total = num_blocks * block_length
    blk = torch.tril(torch.ones(num_blocks, num_blocks))
    block_mask = blk.repeat_interleave(block_length, 0).repeat_interleave(block_length, 1).bool()  # [total, total]
    x = torch.full((total,), mask_id, dtype=torch.long)
    x[:P] = torch.tensor(list(prompt), dtype=torch.long)
    base, rem = divmod(block_length, steps)
    schedule = [base + (1 if i < rem else 0) for i in range(steps)]
    prefill_blocks = P // block_length
    nfe = 0
    for num_block in range(prefill_blocks, num_blocks):
        end = (num_block + 1) * block_length
        cur_x = x[:end]  # a view: writes land in x
        cur_mask = block_mask[:end, :end]
        for step in range(steps):
            active = cur_x[-block_length:] == mask_id
            if active.sum() == 0:
                break
            logits = logits_fn(cur_x.clone(), cur_mask)
            nfe += 1
            x0, x0_p = choose(logits[-block_length:], mask_id, vocab_limit)
            n_step = schedule[step]
            confidence = torch.where(active, x0_p, torch.tensor(float("-inf")))
            high = confidence > threshold
            transfer = torch.zeros_like(active)
            if int(high.sum()) >= n_step:
                transfer = high
            else:
                _, idx = torch.topk(confidence, min(n_step, int(active.sum())))
                transfer[idx] = True
            blockv = cur_x[-block_length:]
            blockv[transfer] = x0[transfer]
        if (x[P:end] == eos_id).any():
            break
    out = x[P:P + gen_length].tolist()
    if eos_id in out:
        out = out[:out.index(eos_id) + 1]
    return out, nfe
