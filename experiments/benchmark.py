"""Roofline benchmark of the engine at real model shapes with random bf16 weights (issue 7 §3).

Run on a CUDA machine from the repo root::

    python experiments/benchmark.py --models llada2_mini,llada_8b --out $OUT
    python experiments/benchmark.py --checkpoint /data/mini --models mini --out $OUT   # an existing folder
    python experiments/benchmark.py --device cpu --tiny            # the CPU smoke run (tests)

For each model shape it writes a real checkpoint (config.json, configuration module,
tokenizer, safetensors) with random weights into a temp dir (or, with ``--checkpoint``, takes
the given folder as it is: family and shape from its config.json; ``--models`` then only labels
the rows), builds the engine once (``--quantization none|fp8``: the engine's weight format)
(``multi_bd``, block 32, buffer 1, page 32) and, per kernel backend (``torch``, ``triton``:
the runner's per-layer ``kernels`` attribute is switched, the weights are loaded once),
per schedule k (exactly k leftmost masks of each block accepted per forward: random weights
make confidences meaningless) and per batch size, measures over the decode steps after
warm-up:

- ``fwd_ms``: median CUDA-event time of the forward (model + logits);
- ``graphed part ms`` (CUDA graphs on): median CUDA-event time of the graphed body (static-input
  copies, graph launches, replay); ``fwd - graphed`` is the host's input preparation before it
  (the GPU idles) plus the eager logits after it;
- ``step_ms``: median wall time of ``engine.step`` (forward + sampling + host work);
- ``host_ms``: median of (step wall time - forward GPU time): scheduler, batch packing,
  sampling, Python, not hidden behind the GPU;
- ``tok/s`` = batch * TPF / step wall time; ``TPF`` measured (tokens decided per request per forward);
- ``U``: distinct routed experts per MoE layer per step, averaged over the measured steps (from
  the router outputs of an untimed eager replay of the same requests and steps: same prompts,
  same fixed schedule, so the same tokens; CUDA graph replays do not run Python hooks); printed
  beside every floor ratio (``-``: a dense model);
- ``GB/step``: weights read (all but the embedding table; routed experts only the U
  selected ones per layer; every tensor at its own element size: FP8 + scales) + KV cache read
  and written (``roofline.weight_bytes``, counted on the loaded model);
- ``floor_ms`` = bytes / HBM bandwidth (measured with a large device copy); ``ratio`` = fwd_ms / floor_ms;
- ``peak_GiB``: peak allocated GPU memory of the row;
- the compute table: the forward's useful FLOPs (``roofline.flop_profile``, token / logits-row /
  attention-pair counts from the eager replay), ``compute floor`` = FLOPs / ``--peak-tflops``,
  fwd / compute floor, and for MoE models the experts calls' time in the eager replay (CUDA
  events) with their TFLOP/s (2 x assignments x (2I*H + H*I)) and % of peak.

``--check`` first compares the reference and Triton paths on the engine's weights
(``gpu_check.compare_backends_on_engine``: on an MoE model with the reference's expert
selection forced on the Triton path, the free-routing numbers on a second line).

Then it builds the ``vanilla`` engine (eager full recompute, kernels=torch, no cache) on the
same weights with steps_per_block = 32 / k and prints its forward time and the speed-up.
"""

from __future__ import annotations

import argparse
import importlib
import gc
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from diffulex.engine.batch import rows_on  # noqa: E402
from diffulex.sampling.base import Sampler, StagedFills  # noqa: E402
from diffulex.sampling.select import select_tokens  # noqa: E402

sys.path.insert(0, str(ROOT / "experiments"))
from roofline import (H200_BF16_DENSE_PEAK_TFLOPS, ReplayProbe, flop_profile, kv_bytes_per_token,  # noqa: E402
                      weight_bytes)

# -- model shapes ------------------------------------------------------------------------------
SHAPES = {
    "llada2_mini": dict(family="llada2", layers=20, hidden=2048, heads=16, kv_heads=4, head_dim=128,
                        inter=5120, experts=256, top_k=8, moe_inter=512, n_group=8, topk_group=4,
                        shared=1, first_dense=1, vocab=157184),
    "llada_8b": dict(family="llada", layers=32, hidden=4096, heads=32, kv_heads=32, head_dim=128,
                     inter=12288, vocab=126464),
}
TINY = {
    "llada2_mini": dict(SHAPES["llada2_mini"], layers=3, hidden=64, heads=4, kv_heads=2, head_dim=16, inter=128,
                        experts=16, top_k=4, moe_inter=32, n_group=4, topk_group=2, vocab=512),
    "llada_8b": dict(SHAPES["llada_8b"], layers=2, hidden=64, heads=4, kv_heads=4, head_dim=16, inter=128,
                     vocab=512),
}
MAX_POS = 4096


def _config_json(shape: dict) -> dict:
    from diffulex.tiny.recipes import config_json

    s = shape
    cfg = config_json(s["family"])
    if s["family"] == "llada2":
        cfg.update(vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["inter"],
                   num_hidden_layers=s["layers"], num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"],
                   head_dim=s["head_dim"], num_experts=s["experts"], num_experts_per_tok=s["top_k"],
                   num_shared_experts=s["shared"], moe_intermediate_size=s["moe_inter"],
                   first_k_dense_replace=s["first_dense"], n_group=s["n_group"], topk_group=s["topk_group"],
                   max_position_embeddings=MAX_POS, torch_dtype="bfloat16")
    else:
        cfg.update(d_model=s["hidden"], n_heads=s["heads"], n_kv_heads=s["kv_heads"], n_layers=s["layers"],
                   mlp_hidden_size=s["inter"], vocab_size=s["vocab"], embedding_size=s["vocab"],
                   max_sequence_length=MAX_POS, torch_dtype="bfloat16")
    return cfg


def _specs(shape: dict) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, kind) of every tensor, under the published checkpoints' names."""
    s = shape
    h, d, v = s["hidden"], s["head_dim"], s["vocab"]

    def mlp(p: str, i: int) -> list:
        return [(f"{p}.gate_proj.weight", (i, h), "linear"), (f"{p}.up_proj.weight", (i, h), "linear"),
                (f"{p}.down_proj.weight", (h, i), "linear")]

    out: list = []
    if s["family"] == "llada2":
        out.append(("model.word_embeddings.weight", (v, h), "embed"))
        for i in range(s["layers"]):
            p = f"model.layers.{i}"
            out += [(f"{p}.input_layernorm.weight", (h,), "norm"), (f"{p}.post_attention_layernorm.weight", (h,), "norm"),
                    (f"{p}.attention.query_key_value.weight", ((s["heads"] + 2 * s["kv_heads"]) * d, h), "linear"),
                    (f"{p}.attention.query_layernorm.weight", (d,), "norm"),
                    (f"{p}.attention.key_layernorm.weight", (d,), "norm"),
                    (f"{p}.attention.dense.weight", (h, s["heads"] * d), "linear")]
            if i < s["first_dense"]:
                out += mlp(f"{p}.mlp", s["inter"])
                continue
            out += [(f"{p}.mlp.gate.weight", (s["experts"], h), "router"),
                    (f"{p}.mlp.gate.expert_bias", (s["experts"],), "expert_bias")]
            for e in range(s["experts"]):
                out += mlp(f"{p}.mlp.experts.{e}", s["moe_inter"])
            out += mlp(f"{p}.mlp.shared_experts", s["moe_inter"] * s["shared"])
        out += [("model.norm.weight", (h,), "norm"), ("lm_head.weight", (v, h), "linear")]
    else:
        kv = s["kv_heads"] * d
        out.append(("model.transformer.wte.weight", (v, h), "embed"))
        for i in range(s["layers"]):
            p = f"model.transformer.blocks.{i}"
            out += [(f"{p}.attn_norm.weight", (h,), "norm"), (f"{p}.ff_norm.weight", (h,), "norm"),
                    (f"{p}.q_proj.weight", (s["heads"] * d, h), "linear"), (f"{p}.k_proj.weight", (kv, h), "linear"),
                    (f"{p}.v_proj.weight", (kv, h), "linear"), (f"{p}.attn_out.weight", (h, s["heads"] * d), "linear"),
                    (f"{p}.ff_proj.weight", (s["inter"], h), "linear"), (f"{p}.up_proj.weight", (s["inter"], h), "linear"),
                    (f"{p}.ff_out.weight", (h, s["inter"]), "linear")]
        out += [("model.transformer.ln_f.weight", (h,), "norm"), ("model.transformer.ff_out.weight", (v, h), "linear")]
    return out


def write_checkpoint(name: str, out_dir: Path, device: torch.device, dtype: torch.dtype = torch.bfloat16,
                     tiny: bool = False, seed: int = 0) -> Path:
    """Write a checkpoint of shape ``name`` with random weights (drawn on ``device``) into ``out_dir``.

    Matrices ~ N(0, 1/fan_in) (activations keep their scale through the layers), the
    router ~ N(0, 4/fan_in) with small expert biases (tokens route differently, so U is
    not an artefact of a dominant bias), norms 1.
    """
    from safetensors.torch import save_file

    from diffulex.tiny.hf_configs import REMOTE_CONFIGS, config_module_source
    from diffulex.tiny.recipes import TOKENIZERS, generation_config_json
    from diffulex.tiny.tokenizer import write_tokenizer

    shape = (TINY if tiny else SHAPES)[name]
    fam = shape["family"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_tokenizer(TOKENIZERS[fam], out)
    cfg = _config_json(shape)
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    (out / f"{REMOTE_CONFIGS[fam].module}.py").write_text(config_module_source(fam))
    gen_cfg = generation_config_json(fam)
    if gen_cfg is not None:
        (out / "generation_config.json").write_text(json.dumps(gen_cfg, indent=2, sort_keys=True) + "\n")
    gen = torch.Generator(device=device).manual_seed(seed)
    shard, shard_bytes, shard_no, weight_map = {}, 0, 0, {}
    limit = 4 << 30

    def flush() -> None:
        nonlocal shard, shard_bytes, shard_no
        if not shard:
            return
        shard_no += 1
        fname = f"model-{shard_no:05d}.safetensors"
        save_file(shard, str(out / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in shard})
        shard, shard_bytes = {}, 0

    for tname, tshape, kind in _specs(shape):
        if kind == "norm":
            t = torch.ones(tshape, dtype=dtype, device=device)
        elif kind == "expert_bias":
            t = (0.01 * torch.randn(tshape, generator=gen, device=device)).float()  # fp32, as published
        else:
            std = {"linear": 1.0, "embed": 1.0, "router": 2.0}[kind] / math.sqrt(tshape[-1] if kind != "embed" else 1)
            t = (torch.randn(tshape, generator=gen, device=device, dtype=torch.float32) * std).to(dtype)
        shard[tname] = t.cpu()
        shard_bytes += t.numel() * t.element_size()
        if shard_bytes >= limit:
            flush()
    flush()
    total = sum((out / f).stat().st_size for f in set(weight_map.values()))
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=1))
    return out


# -- the fixed schedule -------------------------------------------------------------------------
class FixedKSampler(Sampler):
    """Greedy tokens; accepts exactly the ``k`` leftmost masks of every in-flight block per forward.

    Device tensor code without a host sync (``launch``), so the overlapped loop can queue the
    next step before this one is read; every block surely takes ``min(k, masks)`` (``sure_fills``)."""

    k = 1

    def decide(self, batch, logits, reqs, forbidden):
        return self.launch(batch, logits, reqs, forbidden).result()

    def launch(self, batch, logits, reqs, forbidden):
        dev = logits.device
        tokens, conf = select_tokens(logits, forbidden, self.row_params(batch, reqs, dev),
                                     self.config.sampling.confidence, kernels=self.config.runtime.kernels.value)
        db = rows_on(batch, dev)  # non-blocking copies: no wait for the forward here
        is_mask = (db.row_token == self.config.model.mask_token_id).long()  # [M]
        order = (db.row_block * (1 << 32) + db.row_position).argsort()  # [M] rows by (block, position)
        m, blk = is_mask[order], db.row_block[order]
        n = m.shape[0]
        before = m.cumsum(0) - m  # masks before each sorted row
        first = torch.ones(n, dtype=torch.bool, device=dev)
        first[1:] = blk[1:] != blk[:-1]
        idx = torch.arange(n, device=dev)
        start = torch.where(first, idx, torch.zeros_like(idx)).cummax(0).values
        rank = before - before[start]  # masks before the row within its block
        take = torch.zeros(n, dtype=torch.bool, device=dev).scatter(0, order, (m == 1) & (rank < self.k))  # [M]
        # The engine samplers' own staging (one host transfer, no Python loop per row).
        return StagedFills(len(reqs), take, db.row_request, db.row_position, tokens, conf)

    def sure_fills(self, batch):
        return torch.full_like(batch.block_quota, self.k)


def fixed_k_sampler(k: int) -> type:
    return type(f"FixedK{k}Sampler", (FixedKSampler,), {"k": k})


# -- measurement ----------------------------------------------------------------------------------
def hbm_bandwidth(device: torch.device) -> float:
    """Bytes/s of a 2 GiB device-to-device copy (read + write), median of 10."""
    n = 1 << 30  # elements of 2 bytes
    src = torch.empty(n, dtype=torch.bfloat16, device=device).fill_(1)
    dst = torch.empty_like(src)
    times = []
    for _ in range(12):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * 2 * n / statistics.median(times[2:])


class StepTimer:
    """Wraps the engine's forward with CUDA events (GPU) and records the batch's context sizes.

    With CUDA graphs it also brackets the graphs' ``run`` (static-input copies, graph launches,
    body) with events: ``graph_s`` is that part of the forward; the rest is the host's input
    preparation before it (the GPU idles) and the logits after it."""

    def __init__(self, engine, cuda: bool) -> None:
        self.engine, self.cuda = engine, cuda
        self.orig = engine._forward
        self.events: list = []
        self.graph_events: list = []
        self.tokens: list[tuple[int, int]] = []
        engine._forward = self._forward
        self.graphs = engine.runner.graphs if cuda else None
        if self.graphs is not None:
            self.graph_run = self.graphs.run
            self.graphs.run = self._graph_run

    def _graph_run(self, *args, **kwargs):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        out = self.graph_run(*args, **kwargs)
        b.record()
        if out is not None:
            self.graph_events.append((len(self.events), a, b))
        return out

    def graph_s(self, steps: range) -> float | None:
        """Median GPU time of the graphed part of the forwards in ``steps`` (None if none replayed)."""
        times = [a.elapsed_time(b) / 1e3 for i, a, b in self.graph_events if i in steps]
        return statistics.median(times) if times else None

    def _forward(self, reqs, batch, **kw):
        meta = batch.meta
        self.tokens.append((int(meta.context_lens.sum()), int(meta.positions.shape[0])))
        if not self.cuda:
            t0 = time.perf_counter()
            out = self.orig(reqs, batch, **kw)
            self.events.append(time.perf_counter() - t0)
            return out
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        out = self.orig(reqs, batch, **kw)
        b.record()
        self.events.append((a, b))
        return out

    def gpu_s(self, i: int) -> float:
        e = self.events[i]
        return e if not self.cuda else e[0].elapsed_time(e[1]) / 1e3

    def restore(self) -> None:
        self.engine._forward = self.orig
        if self.graphs is not None:
            del self.graphs.run  # the instance attribute: the class method again


def add_requests(engine, batch: int, prompt_len: int, max_tokens: int) -> list[int]:
    """``batch`` greedy requests with random prompts, the same for the same (batch, prompt_len)."""
    from diffulex.sampling_params import SamplingParams

    vocab_hi = min(engine.tokenizer.vocab_size if hasattr(engine.tokenizer, "vocab_size") else 200, 200)
    gen = torch.Generator().manual_seed(1000 + batch)
    mask_id = engine.config.model.mask_token_id
    sp = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    ids = []
    for _ in range(batch):
        prompt = torch.randint(10, vocab_hi, (prompt_len,), generator=gen).tolist()
        prompt = [t if t != mask_id else t + 1 for t in prompt]
        ids.append(engine.add_request(prompt, sp))
    return ids


def drop_requests(engine, ids: list[int]) -> None:
    engine._drop_spec()  # a guessed step of these requests in flight: discarded, its pages back
    for r in ids:
        engine.abort_request(r)
    for r in ids:
        engine._requests.pop(r, None)


def replay_stats(engine, batch: int, prompt_len: int, warmup: int, measure: int, max_tokens: int,
                 cuda: bool) -> dict:
    """An untimed eager replay of a row's requests (same prompts and schedule, so the same steps;
    graphs off: hooks do not run inside a graph replay). Over the measured steps, per forward:
    ``u`` (distinct routed experts per MoE layer), ``tokens``, model ``flops``, and the experts
    calls' GPU time ``experts_s`` and FLOPs ``experts_flops`` (see ``roofline.ReplayProbe``)."""
    probe = ReplayProbe(engine, cuda)
    graphs, engine.runner.graphs = engine.runner.graphs, None
    speculator, engine.speculator = engine.speculator, None  # one forward per step: the synchronous loop
    ids = add_requests(engine, batch, prompt_len, max_tokens)
    model = engine.runner.model
    try:
        for i in range(warmup + measure):
            probe.active = i >= warmup
            engine.step()
        profile = flop_profile(model)
        return probe.summary(profile, profile["assignment"])
    finally:
        engine.runner.graphs = graphs
        probe.close()
        drop_requests(engine, ids)
        engine.speculator = speculator


def run_rows(engine, k: int, batch: int, prompt_len: int, warmup: int, measure: int, cuda: bool,
             max_tokens: int, replay: bool = True) -> dict:
    """Add ``batch`` requests, step ``warmup + measure`` times, abort; the row's numbers (with
    ``replay``, also those of :func:`replay_stats`)."""
    ids = add_requests(engine, batch, prompt_len, max_tokens)
    timer = StepTimer(engine, cuda)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    walls, decided = [], []
    stats = engine.overlap_stats
    hits0, misses0 = (stats.hits, stats.misses) if stats is not None else (0, 0)
    try:
        for i in range(warmup + measure):
            # The synchronous loop: each step timed alone (synced before). Overlapped: the next step
            # is queued while this one is read, so no sync between steps; each step() call is timed
            # (in steady state the GPU's step, or the host's work if that is longer), and the span of
            # the measured steps too (its mean includes any graph capture in it; medians do not).
            if cuda and (stats is None or i == warmup):
                torch.cuda.synchronize()
            before = {r: len(engine._requests[r].records) for r in ids}
            if i == warmup:
                ev0 = len(timer.events)  # the measured steps' forwards (with discarded guesses) from here
                span0 = time.perf_counter()
            t0 = time.perf_counter()
            engine.step()
            walls.append(time.perf_counter() - t0)
            n = 0
            for r in ids:
                recs = engine._requests[r].records
                n += sum(x.num_decided for x in recs[before[r]:])
            decided.append(n)
        if cuda:
            torch.cuda.synchronize()
        span_s = (time.perf_counter() - span0) / measure
        wasted = (stats.misses - misses0) if stats is not None else 0
        if len(timer.events) != warmup + measure + wasted + (engine.speculator is not None and engine.speculator.inflight is not None):
            raise RuntimeError(f"expected one forward per step (+ {wasted} discarded guesses), "
                               f"got {len(timer.events)}")
    finally:
        hits = (stats.hits - hits0) if stats is not None else None
        misses = (stats.misses - misses0) if stats is not None else None
        skipped = dict(stats.skipped) if stats is not None else None
        timer.restore()
        drop_requests(engine, ids)
    peak = torch.cuda.max_memory_allocated() if cuda else 0
    replay = replay_stats(engine, batch, prompt_len, warmup, measure, max_tokens, cuda) if replay else {}
    sl = slice(warmup, warmup + measure)
    fwd = range(ev0, len(timer.events))  # the forwards run during the measured steps
    gpu = [timer.gpu_s(i) for i in fwd]
    ctx = [c for c, _ in timer.tokens[ev0:]]
    ntok = [t for _, t in timer.tokens[ev0:]]
    tpf = statistics.mean(decided[sl]) / batch
    step_s = statistics.median(walls[sl])
    # host: the part of a step the GPU does not cover (synchronous loop: the host's own work between
    # forwards; overlapped: what is left of it once the next step is queued early).
    return dict(fwd_s=statistics.median(gpu), step_s=step_s, host_s=step_s - statistics.median(gpu),
                graph_s=timer.graph_s(fwd), hits=hits, misses=misses, skipped=skipped, span_s=span_s,
                tpf=tpf, ctx=statistics.mean(ctx), ntok=statistics.mean(ntok),
                peak=peak, **replay)


def profile_steps(engine, args, name: str, k: int = 32, batch: int = 1) -> None:
    """torch.profiler over 3 decode steps (triton, schedule k, ``batch`` requests): where the step time goes."""
    from torch.profiler import ProfilerActivity, profile

    from diffulex.layers.backend import set_kernel_backend
    from diffulex.sampling_params import SamplingParams

    engine.runner.kernels = set_kernel_backend(engine.runner.model, "triton", engine.runner.device)
    engine.config.runtime.kernels = type(engine.config.runtime.kernels)("triton")
    engine.sampler = fixed_k_sampler(k)(engine.config)
    sp = SamplingParams(temperature=0.0, max_tokens=320, ignore_eos=True)
    rids = [engine.add_request(list(range(10 + i, 10 + i + args.prompt_len)), sp) for i in range(batch)]
    for _ in range(3):
        engine.step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            engine.step()
        torch.cuda.synchronize()
    drop_requests(engine, rids)
    ka = prof.key_averages()
    kernels = sum(e.count for e in ka if e.device_type == torch.autograd.DeviceType.CUDA)
    cuda_us = sum(e.self_device_time_total for e in ka if e.device_type == torch.autograd.DeviceType.CUDA)
    graphs = engine.runner.graphs
    from trace_gaps import gap_report

    gaps = gap_report(prof)
    text = (f"{name} k={k} batch={batch} (CUDA graphs {'on' if graphs is not None else 'off'}): 3 steps, {kernels} GPU kernels ({kernels / 3:.0f} per step), GPU busy "
            f"{cuda_us / 3e3:.2f} ms per step\n" + gaps + "\n"
            + ka.table(sort_by="self_cuda_time_total", row_limit=25) + "\n\n"
            + ka.table(sort_by="self_cpu_time_total", row_limit=25))
    log(text.splitlines()[0] + "\n" + gaps)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / f"profile_{name}_k{k}_b{batch}.txt").write_text(text)


def _free(engine) -> None:
    engine.exit()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def vanilla_rows(name, path, args, common, ks, batches, max_tokens, cuda, results) -> dict:
    """The eager full-recompute ``vanilla`` loop on the same weights (same tokens per forward)."""
    from diffulex import Diffulex

    vrows = {}
    t0 = time.perf_counter()
    van = Diffulex(str(path), decoding_strategy="vanilla", block_size=32, kernels="torch",
                   max_num_seqs=max(batches), enforce_eager=True,
                   max_num_batched_tokens=max(batches) * (args.prompt_len + max(max_tokens.values())) + 64, **common)
    log(f"[{name}] vanilla engine built in {time.perf_counter() - t0:.1f}s")
    for k in ks:
        van.config.strategy.steps_per_block = 32 // k
        for b in batches:
            try:
                r = run_rows(van, k, b, args.prompt_len, 1, args.vanilla_measure, cuda, max_tokens[k], replay=False)
            except torch.cuda.OutOfMemoryError as exc:
                log(f"[{name}] vanilla k={k} b={b}: OOM ({exc})")
                gc.collect(); torch.cuda.empty_cache()
                continue
            r.update(model=name, engine="vanilla", kernels="torch", quantization=common.get("quantization", {}).get(
                "weights", "none"), k=k, batch=b)
            vrows[(k, b)] = r
            results.append(r)
            log(f"[{name}] vanilla k={k:2d} b={b:2d} fwd {r['fwd_s']*1e3:8.2f} ms step {r['step_s']*1e3:8.2f} "
                f"tpf {r['tpf']:.2f}")
    _free(van)
    del van
    return vrows


def describe_checkpoint(path: Path) -> str:
    """Family and shape of a checkpoint folder, from its config.json (for the log)."""
    cfg = json.loads((path / "config.json").read_text())

    def get(*keys):
        return next((cfg[k] for k in keys if cfg.get(k) is not None), "?")

    text = (f"model_type {get('model_type')}, {get('num_hidden_layers', 'n_layers')} layers, hidden "
            f"{get('hidden_size', 'd_model')}, vocab {get('vocab_size')}, dtype {get('torch_dtype')}")
    if cfg.get("num_experts"):
        text += f", {cfg['num_experts']} experts top-{get('num_experts_per_tok')}"
    quant = cfg.get("quantization_config")
    if quant:
        text += f", quantization_config {quant.get('quant_method', quant)}"
    return text


def _fmt(value, spec: str = ".2f", scale: float = 1.0) -> str:
    """A number for the table, ``-`` for a missing / not measurable one."""
    if value is None or isinstance(value, str) or value != value:
        return "-"
    return format(value * scale, spec)


def bench_model(name: str, args, out_lines: list[str], results: list[dict], checkpoint: str | None = None) -> None:
    """Benchmark one model: a written random checkpoint of shape ``name``, or the existing
    ``checkpoint`` folder (then ``name`` is only the label of its rows)."""
    from diffulex import Diffulex
    from diffulex.layers.backend import set_kernel_backend

    cuda = args.device == "cuda"
    dev = torch.device(args.device)
    workdir = None
    if checkpoint is not None:
        path = Path(checkpoint)
        if not (path / "config.json").is_file():
            raise SystemExit(f"benchmark: --checkpoint {path}: no config.json in that folder")
        log(f"[{name}] checkpoint {path}: {describe_checkpoint(path)}")
    else:
        if name not in SHAPES:
            raise SystemExit(f"benchmark: unknown model {name!r}; choose from {sorted(SHAPES)} or pass --checkpoint DIR")
        workdir = Path(tempfile.mkdtemp(prefix=f"bench_{name}_", dir=args.workdir))
        t0 = time.perf_counter()
        path = write_checkpoint(name, workdir / name, dev, torch.bfloat16 if cuda else torch.float32, tiny=args.tiny)
        log(f"[{name}] checkpoint written in {time.perf_counter() - t0:.1f}s -> {path}")
    quant = args.quantization
    ks = args.ks
    batches = args.batches
    steps_needed = args.warmup + args.measure + 4
    max_tokens = {k: -(-k * steps_needed // 32) * 32 for k in ks}
    plens = [args.prompt_len] + [p for p in args.long_prompts if p != args.prompt_len]
    max_len = max(plens) + max(max_tokens.values()) + 64
    common = dict(device=args.device, page_size=32, max_model_len=max_len, record_trajectory=False,
                  dtype="bfloat16" if cuda else "float32",
                  overlap={"auto": None, "on": True, "off": False}[args.overlap])
    from diffulex.config.aliases import GROUPS

    if "quantization" in GROUPS:  # the engine's quantization group: none = full precision, fp8 = e4m3 weights
        common["quantization"] = {"weights": quant}
    elif quant != "none":
        raise SystemExit("benchmark: --quantization fp8 needs the engine's quantization config group")
    backends = ["torch", "triton"] if cuda else ["torch"]
    if cuda and args.graphs:
        backends.append("triton+graphs")
    if args.backends:
        wanted = args.backends.split(",")
        known = {"torch", "triton", "triton+graphs", "triton+graphs-nosplit", "triton+graphs-nofold",
                 "triton+graphs-oneseg", "triton+graphs-nopdl", "triton+graphs-sync"}
        if set(wanted) - known:
            raise SystemExit(f"benchmark: unknown --backends {sorted(set(wanted) - known)}; choose from {sorted(known)}")
        backends = [b for b in backends if b in wanted]
        for variant in ("triton+graphs-nosplit", "triton+graphs-nofold", "triton+graphs-oneseg",
                        "triton+graphs-nopdl", "triton+graphs-sync"):  # A/B, same weights
            if cuda and variant in wanted:
                backends.insert(0, variant)
    t0 = time.perf_counter()
    engine = Diffulex(str(path), decoding_strategy="multi_bd", block_size=32, buffer_size=1,
                      kernels=backends[-1].split("+")[0], max_num_seqs=max(batches),
                      max_num_batched_tokens=max(max(batches) * (args.prompt_len + 32), max(plens) + 32) + 64,
                      enforce_eager=not (cuda and args.graphs), **common)
    resolved = getattr(getattr(engine.config, "quantization", None), "weights", quant)
    quant = getattr(resolved, "value", resolved)  # what the engine runs (rows carry it)
    log(f"[{name}] engine built in {time.perf_counter() - t0:.1f}s (weights: quantization {quant})")
    if args.check and cuda:
        from gpu_check import compare_backends_on_engine, summary

        res = compare_backends_on_engine(engine, args.prompt_len)
        log(f"[{name}] {common['dtype']} logits torch vs triton (weights: quantization {quant}): {summary(res)}")
        results.append({"model": name, "quantization": quant, "check": res})
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / f"check_{name}.json").write_text(json.dumps(res, indent=1))
    if args.profile and cuda:
        for spec in args.profile_rows.split(","):
            k_p, b_p = (int(v) for v in spec.split("x"))
            profile_steps(engine, args, name, k_p, b_p)
    if args.only_check:
        _free(engine)
        return
    always, expert_b, moe_layers = weight_bytes(engine.runner.model)
    kvb = kv_bytes_per_token(engine.runner)
    log(f"[{name}] weights read per step: {always / 1e6:.3f} MB + U x {expert_b / 1e6:.4f} MB per MoE layer "
        f"x {moe_layers} MoE layers; KV {kvb} B per token")
    bw = args.bandwidth
    peak = args.peak_tflops * 1e12 if cuda else None  # no compute peak for the CPU smoke run
    rows = {}
    graphs = engine.runner.graphs
    max_splits = importlib.import_module("diffulex.kernels.triton.paged_attention")._MAX_SPLITS if cuda else 0
    llada2_module = importlib.import_module("diffulex.models.llada2")
    fold_max = llada2_module.FOLD_MAX_TOKENS
    user_pdl = os.environ.get("DIFFULEX_PDL")
    starts = list(graphs.segment_starts) if graphs is not None else []
    speculator = engine.speculator  # the overlapped loop (runtime.overlap; on by default on CUDA)
    for backend in backends:
        kern = backend.split("+")[0]
        engine._drop_spec()
        engine.speculator = None if backend.endswith("-sync") else speculator
        engine.runner.kernels = set_kernel_backend(engine.runner.model, kern, dev)
        engine.config.runtime.kernels = type(engine.config.runtime.kernels)(kern)
        engine.runner.graphs = graphs if "+graphs" in backend else None
        if cuda and "triton" in backend:
            pa_module = importlib.import_module("diffulex.kernels.triton.paged_attention")
            pa_module._MAX_SPLITS = 0 if backend.endswith("-nosplit") else max_splits  # benchmark-only switches
            llada2_module.FOLD_MAX_TOKENS = 0 if backend.endswith("-nofold") else fold_max
            if backend.endswith("-nopdl"):  # plain launches instead of programmatic dependent launch
                os.environ["DIFFULEX_PDL"] = "0"
            elif user_pdl is None:
                os.environ.pop("DIFFULEX_PDL", None)
            else:  # the caller's own setting holds for the other variants
                os.environ["DIFFULEX_PDL"] = user_pdl
            if graphs is not None:  # -oneseg: the body as one graph per shape (no segments)
                graphs.segment_starts = [] if backend.endswith("-oneseg") else starts
            if graphs is not None:
                graphs.clear()  # captured graphs hold the previous attention variant
        cases = [(args.prompt_len, k, b) for k in ks for b in batches] + \
            [(p, k, 1) for p in plens[1:] for k in ks]  # long prompts: batch 1
        for plen, k, b in cases:
            engine.sampler = fixed_k_sampler(k)(engine.config)
            try:
                r = run_rows(engine, k, b, plen, args.warmup, args.measure, cuda, max_tokens[k])
            except torch.cuda.OutOfMemoryError as exc:
                log(f"[{name}] {backend} prompt={plen} k={k} b={b}: OOM ({exc})")
                gc.collect(); torch.cuda.empty_cache()
                continue
            u = r["u"] if moe_layers else None
            nbytes = always + (u or 0) * expert_b * moe_layers + (r["ctx"] + r["ntok"]) * kvb
            floor = nbytes / bw if bw else float("nan")
            cfloor = r["flops"] / peak if peak and r["flops"] else None
            tflops = r["experts_flops"] / r["experts_s"] if r["experts_s"] else None
            r.update(model=name, engine="multi_bd", kernels=backend, quantization=quant, k=k, batch=b, bytes=nbytes,
                     floor_s=floor, u=u if u is not None else "-",
                     floor_ratio=r["fwd_s"] / floor if bw else None,
                     step_floor_ratio=r["step_s"] / floor if bw else None,
                     compute_floor_s=cfloor, compute_ratio=r["fwd_s"] / cfloor if cfloor else None,
                     experts_tflops=tflops / 1e12 if tflops else None,
                     experts_peak_pct=100 * tflops / peak if tflops and peak else None,
                     prompt_len=plen, graphs=(graphs.captures, graphs.replays) if graphs is not None else None)
            rows[(backend, plen, k, b)] = r
            results.append(r)
            log(f"[{name}] {backend:6s} {quant} prompt={plen} k={k:2d} b={b:2d} fwd {r['fwd_s']*1e3:8.2f} ms step "
                f"{r['step_s']*1e3:8.2f} host {r['host_s']*1e3:6.2f} graphed part {(r['graph_s'] or 0)*1e3:6.2f} "
                f"tpf {r['tpf']:.2f} floor {floor*1e3:.2f} ms ratio {_fmt(r['floor_ratio'])} (U {_fmt(u, '.1f')}); "
                f"{r['tokens']:.0f} tokens, {r['flops'] / 1e12:.4g} TFLOP, compute floor "
                f"{_fmt(cfloor, '.2f', 1e3)} ms ratio {_fmt(r['compute_ratio'])} (U {_fmt(u, '.1f')}); experts "
                f"{_fmt(r['experts_s'], '.2f', 1e3)} ms {_fmt(r['experts_tflops'], '.4g')} TFLOP/s "
                f"({_fmt(r['experts_peak_pct'], '.1f')} % of peak); graphs {r['graphs']}; overlap "
                f"{'off' if r['hits'] is None else str(r['hits']) + ' hits / ' + str(r['misses']) + ' misses'} "
                f"(not guessed, engine total: {r['skipped']}); mean step over the span {r['span_s']*1e3:.2f} ms")
    _free(engine)
    del engine
    # -- the vanilla baseline on the same weights ---------------------------------------------
    vrows = vanilla_rows(name, path, args, common, ks, batches, max_tokens, cuda, results) if args.vanilla else {}
    if workdir is not None and not args.keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    # -- tables ---------------------------------------------------------------------------------
    if checkpoint is not None:
        what = f"checkpoint {path}"
    else:
        what = f"{'tiny' if args.tiny else 'real shape'}, random weights"
    out_lines.append(f"\n### {name} ({what}; weights: quantization {quant}), HBM {bw / 1e12:.2f} TB/s measured\n"
                     if bw else f"\n### {name} ({what}; weights: quantization {quant}; CPU)\n")
    out_lines.append("| kernels | quant | prompt | k | batch | fwd ms | graphed part ms | step ms | host ms (% step) | "
                     "overlap hits / misses | tok/s | "
                     "TPF | GB/step | floor ms | U | floor ratio | peak GiB | vanilla step ms | "
                     "speed-up vs vanilla (per step, same k) |")
    out_lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (backend, plen, k, b), r in rows.items():
        v = vrows.get((k, b)) if plen == args.prompt_len else None
        ov = "off" if r.get("hits") is None else f"{r['hits']} / {r['misses']}"
        toks = b * r["tpf"] / r["step_s"]
        graphed = f"{r['graph_s']*1e3:.2f}" if r.get("graph_s") else "-"
        vanilla = f"{v['step_s']*1e3:.2f} | {v['step_s']/r['step_s']:.1f}x" if v else "- | -"
        out_lines.append(
            f"| {backend} | {quant} | {plen} | {k} | {b} | {r['fwd_s']*1e3:.2f} | {graphed} | {r['step_s']*1e3:.2f} | "
            f"{r['host_s']*1e3:.2f} ({100*r['host_s']/r['step_s']:.0f}%) | {ov} | {toks:,.0f} | {r['tpf']:.2f} | "
            f"{r['bytes']/1e9:.2f} | {_fmt(r['floor_s'], '.2f', 1e3)} | {_fmt(r['u'], '.1f')} | "
            f"{_fmt(r['floor_ratio'])} | {r['peak']/2**30:.1f} | {vanilla} |")
    n_main = len(rows) + 3
    peak_text = f"{args.peak_tflops:.0f} TFLOP/s" if cuda else "no peak on CPU"
    out_lines.append(f"\nCompute ({name}): compute floor = model FLOPs / {peak_text} (bf16 dense peak); experts = "
                     "the MoE experts calls of an untimed eager replay (CUDA events), FLOPs 2 x assignments x "
                     "(2I*H + H*I)\n")
    out_lines.append("| kernels | quant | prompt | k | batch | tokens / fwd | TFLOP / fwd | compute floor ms | U | "
                     "fwd / compute floor | experts ms | experts TFLOP/s | experts % of peak |")
    out_lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (backend, plen, k, b), r in rows.items():
        out_lines.append(
            f"| {backend} | {quant} | {plen} | {k} | {b} | {r['tokens']:,.0f} | {r['flops'] / 1e12:.4g} | "
            f"{_fmt(r['compute_floor_s'], '.2f', 1e3)} | {_fmt(r['u'], '.1f')} | {_fmt(r['compute_ratio'])} | "
            f"{_fmt(r['experts_s'], '.2f', 1e3)} | {_fmt(r['experts_tflops'], '.4g')} | "
            f"{_fmt(r['experts_peak_pct'], '.1f')} |")
    for line in out_lines[-(n_main + len(rows) + 3):]:
        print(line, flush=True)


LOG: list[str] = []


def log(msg: str) -> None:
    LOG.append(msg)
    print(msg, flush=True)


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=None,
                    help=f"comma-separated shapes to write random checkpoints of ({','.join(SHAPES)}; default all); "
                    "with --checkpoint: the labels of the checkpoints' rows (default: the folder names)")
    ap.add_argument("--checkpoint", default=None,
                    help="comma-separated existing checkpoint folders to benchmark instead of written random "
                    "weights (family and shape from each config.json)")
    ap.add_argument("--quantization", default="none", choices=["none", "fp8"],
                    help="weights of the engine: none (as loaded) or fp8 (passes quantization={'weights': 'fp8'})")
    ap.add_argument("--peak-tflops", type=float, default=H200_BF16_DENSE_PEAK_TFLOPS,
                    help="bf16 dense peak for the compute floor and the experts' %% of peak (default: the "
                    "H200 figure of issue #18)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--tiny", action="store_true", help="tiny sizes of the same families (CPU smoke run)")
    ap.add_argument("--overlap", default="auto", choices=["auto", "on", "off"],
                    help="runtime.overlap of the engine (auto: on for CUDA); the triton+graphs-sync backend "
                         "runs the synchronous loop on the same engine")
    ap.add_argument("--ks", default="1,32")
    ap.add_argument("--batches", default="1,4,16,64")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--long-prompts", type=lambda v: [int(x) for x in v.split(",") if x], default=[],
                    help="extra batch-1 rows with these prompt lengths, e.g. 2048 (long-context attention)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--measure", type=int, default=8)
    ap.add_argument("--vanilla-measure", type=int, default=3)
    ap.add_argument("--workdir", default=None, help="where checkpoints are written (default: the temp dir)")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="directory for the table and JSON")
    ap.add_argument("--keep", action="store_true", help="keep the written checkpoints")
    ap.add_argument("--no-graphs", dest="graphs", action="store_false", help="no triton+graphs rows")
    ap.add_argument("--backends", default=None, help="subset of torch,triton,triton+graphs (default: all); "
                    "triton+graphs-nosplit / -nofold / -oneseg / -nopdl: the same without the split-KV attention / "
                    "without LLaDA2's shared expert inside the fused MoE / with the body as one graph / "
                    "with plain kernel launches instead of programmatic dependent launch (A/B)")
    ap.add_argument("--no-vanilla", dest="vanilla", action="store_false", help="skip the vanilla baseline rows")
    ap.add_argument("--profile", action="store_true", help="torch.profiler of 3 decode steps (triton) per --profile-rows")
    ap.add_argument("--profile-rows", default="32x1", help="comma-separated KxBATCH rows to profile, e.g. 1x1,32x16")
    ap.add_argument("--only-check", action="store_true", help="write, build, --check/--profile, no benchmark rows")
    ap.add_argument("--check", action="store_true", help="also compare torch vs triton bf16 logits (gpu_check)")
    args = ap.parse_args(argv)
    args.ks = [int(x) for x in args.ks.split(",")]
    args.batches = [int(x) for x in args.batches.split(",")]
    if args.checkpoint:
        args.checkpoint = [c for c in args.checkpoint.split(",") if c]
        labels = args.models.split(",") if args.models else [Path(c).name for c in args.checkpoint]
        if len(labels) != len(args.checkpoint):
            ap.error(f"--models names {len(labels)} label(s) for {len(args.checkpoint)} --checkpoint folder(s)")
        args.runs = list(zip(labels, args.checkpoint))
    else:
        args.runs = [(m, None) for m in (args.models or ",".join(SHAPES)).split(",")]
    return args


def main(argv=None) -> list[dict]:
    args = parse(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmark: --device cuda but no CUDA device; use --device cpu --tiny")
    cuda = args.device == "cuda"
    args.bandwidth = hbm_bandwidth(torch.device("cuda")) if cuda else 0.0
    card = torch.cuda.get_device_name() if cuda else "cpu"
    log(f"device {card}; HBM copy bandwidth {args.bandwidth / 1e12:.3f} TB/s")
    lines = [f"card: {card}; torch {torch.__version__}; date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
             f"command: {' '.join(sys.argv)}"]
    results: list[dict] = []
    for name, checkpoint in args.runs:
        bench_model(name, args, lines, results, checkpoint)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "benchmark.md").write_text("\n".join(lines) + "\n")
        (out / "benchmark.json").write_text(json.dumps(results, indent=1, default=str))
        (out / "benchmark.log").write_text("\n".join(LOG) + "\n")
    return results


if __name__ == "__main__":
    main()
