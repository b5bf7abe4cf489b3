"""GPU correctness of the optimized path (Triton kernels) against the reference path (PyTorch), issue 7 §4.

Run on a CUDA machine from the repo root: ``python experiments/gpu_check.py [--real] [--out DIR]``.

1. Tiny checkpoints, fp32: for each family (``multi_bd``) and for the strategies with extra
   step inputs (dmax, d2f, fast_dllm_v2 dual cache, diffusion_gemma), and on 300-400-token
   prompts (llada, llada2: the attention's split key axis), and llada2 on one prompt (its shared
   expert inside the fused MoE), one engine (``kernels='auto'``,
   which must resolve to Triton on CUDA) generates greedily on a few prompts; the
   same engine, switched to the reference ops (the runner's per-layer ``kernels``
   attribute), generates again; and once more on Triton with the synchronous loop (the first
   two runs use the overlapped loop, on by default on CUDA). Outputs must agree token for token.
   ``--fp8``: the ``multi_bd`` family cases again with ``quantization="fp8"`` (FP8 weights, 128 x 128
   tiles; fp32 activations): the Triton FP8 linear and experts against the reference ops on the
   same FP8 values, token for token.
2. ``--real``: real-shape LLaDA2.0-mini (128-token prompts) and LLaDA-8B (1,536-token prompts)
   checkpoints with random bf16 weights (written by
   ``experiments/benchmark.py``'s writer): every forward of a few engine steps runs with
   both backends on the same batch; the logits must agree within bf16 tolerance (relative
   L2 error and top-1 agreement), on the MoE model with the reference path's expert selection
   forced on the Triton path (``forced_routing.py``; the free-routing numbers are reported
   too). ``benchmark.py --check`` runs the same comparison on the engine it benchmarks.

Exits 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "experiments"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

TINY_FAMILIES = ("llada2", "llada", "sdar_moe", "sdar", "dream", "fast_dllm_v2")
# Strategies whose steps carry inputs beyond the tokens (graphed through static buffers) or
# that plan cache-only / windowed steps: (family, engine keyword arguments).
TINY_STRATEGIES = (
    ("llada2", dict(decoding_strategy="dmax", sampling_mode="edit")),
    ("llada", dict(decoding_strategy="d2f")),
    ("fast_dllm_v2", dict(decoding_strategy="fast_dllm_v2", use_dual_cache=True)),
    ("diffusion_gemma", dict(decoding_strategy="diffusion_gemma", block_size=None, page_size=16)),
)
PROMPTS = [[11, 12, 13, 14, 15], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50], [7, 8, 9]]
# Contexts of 300-400 keys: the attention splits its key axis (>= 256 keys, see paged_attention).
LONG_PROMPTS = [[(7 * i) % 200 + 20 for i in range(400)], [(3 * i) % 150 + 30 for i in range(300)]]
REL_TOL, TOP1_MIN = 0.05, 0.9  # bf16 tolerance of the logits (relative L2 error, top-1 agreement)


def _switch(engine, backend: str) -> None:
    from diffulex.config.enums import KernelBackend
    from diffulex.layers.backend import set_kernel_backend

    engine.runner.kernels = set_kernel_backend(engine.runner.model, backend, engine.runner.device)
    engine.config.runtime.kernels = KernelBackend(backend)  # the runner replays CUDA graphs only on triton


def check_tiny(root: Path, report: list[dict], fp8: bool = False) -> bool:
    from diffulex import Diffulex
    from diffulex.sampling_params import SamplingParams
    from diffulex.tiny import ensure_tiny_checkpoint

    ok_all = True
    # Seeded: DiffusionGemma's canvases start as random tokens drawn from the request's generator.
    sp = SamplingParams(temperature=0.0, max_tokens=48, ignore_eos=True, seed=0)
    cases = [(fam, dict(decoding_strategy="multi_bd"), PROMPTS) for fam in TINY_FAMILIES] + \
        [(fam, kw, PROMPTS) for fam, kw in TINY_STRATEGIES] + \
        [(fam, dict(decoding_strategy="multi_bd", quantization="fp8"), PROMPTS) for fam in TINY_FAMILIES if fp8] + \
        [(fam, dict(decoding_strategy="multi_bd"), LONG_PROMPTS) for fam in ("llada", "llada2")] + \
        [("llada2", dict(decoding_strategy="multi_bd"), PROMPTS[1:2])]  # batch 1: shared expert in the fused MoE
    for fam, kw, prompts in cases:
        path = ensure_tiny_checkpoint(fam, root=root)
        try:
            with Diffulex(str(path), **{**dict(device="cuda", dtype="float32", kernels="auto",
                                               enforce_eager=False), **kw}) as llm:
                resolved = llm.runner.kernels
                outs, overlap = {}, None
                speculator = llm.speculator  # the overlapped loop (on by default on CUDA)
                for backend in ("triton", "torch", "triton-sync"):
                    _switch(llm, backend.split("-")[0])
                    llm.speculator = None if backend.endswith("-sync") else speculator
                    before = (speculator.stats.hits, speculator.stats.misses) if speculator else (0, 0)
                    res = llm.generate(prompts, sp)
                    if backend == "triton" and speculator is not None:
                        overlap = (speculator.stats.hits - before[0], speculator.stats.misses - before[1])
                    outs[backend] = [t.token_ids if hasattr(t, "token_ids") else t.output_token_ids
                                     for t in res.trajectories]
                llm.speculator = speculator
                graphs = (llm.runner.graphs.captures, llm.runner.graphs.replays) if llm.runner.graphs else None
            same = outs["triton"] == outs["torch"]
            # The overlapped loop (guessed steps on CUDA graphs) equals the synchronous one.
            same_sync = outs["triton"] == outs["triton-sync"]
            # The Triton path must really have run from CUDA graphs (a failed capture runs eagerly).
            ok = same and same_sync and resolved == "triton" and graphs is not None and graphs[1] > 0
            row = dict(check="tiny_fp8" if "quantization" in kw else "tiny_fp32", family=fam,
                       strategy=kw["decoding_strategy"], prompt_lens=[len(p) for p in prompts], resolved=resolved,
                       token_for_token=same, overlap_equals_sync=same_sync, overlap_hits_misses=overlap,
                       graphs=graphs, tokens=sum(len(x) for x in outs["torch"]), ok=ok)
        except Exception as exc:  # report and go on with the other cases
            ok, row = False, dict(check="tiny_fp32", family=fam, strategy=kw["decoding_strategy"], ok=False,
                                  error=f"{type(exc).__name__}: {exc}")
        ok_all &= ok
        report.append(row)
        print(json.dumps(row), flush=True)
    return ok_all


def _set_kernels(engine, backend: str, only: tuple[type, ...] | None = None) -> None:
    """Switch the whole model (``only`` None) or just the modules of the ``only`` classes."""
    if only is None:
        _switch(engine, backend)
        return
    for mod in engine.runner.model.modules():
        if getattr(mod, "uses_kernels", False) and isinstance(mod, only):
            mod.kernels = backend


class _Capture:
    """Forward hooks: outputs of the decoder layers and of the routers, per run."""

    def __init__(self, model) -> None:
        from diffulex.layers.moe.router import GroupLimitedSigmoidRouter, SoftmaxTopKRouter

        self.layers, self.routes, self.handles = [], [], []
        lists = [m for n, m in model.named_modules() if isinstance(m, torch.nn.ModuleList) and n.endswith(("layers", "blocks"))]
        for layer in (lists[0] if lists else []):
            self.handles.append(layer.register_forward_hook(
                lambda m, i, o: self.layers.append((o[0] if isinstance(o, tuple) else o).detach().float().clone())))
        for mod in model.modules():
            if isinstance(mod, (GroupLimitedSigmoidRouter, SoftmaxTopKRouter)):
                self.handles.append(mod.register_forward_hook(
                    lambda m, i, o: self.routes.append(o[0][:, :m.top_k].sort(-1).values.clone())))  # routed columns

    def reset(self) -> None:
        self.layers, self.routes = [], []

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def compare_backends_on_engine(engine, prompt_len: int = 128, batch: int = 4, steps: int = 3,
                               detail: bool = True) -> dict:
    """Run ``steps`` engine steps of ``batch`` random prompts; every forward runs on torch and on
    triton with the same inputs. Returns the worst relative L2 error and the top-1 agreement.

    On an MoE model the decisive comparison forces the reference path's expert selection on
    the Triton path (``triton_forced``: the routers' ids and weights recorded in the torch
    forward replace the Triton routers' outputs, see ``forced_routing.py``), so the tolerance
    measures the kernels, not top-k flips between near-tied experts; the free-routing
    comparison (``triton``) is reported alongside (``free_routing``: its errors and the
    fraction of tokens routed differently) and decides nothing. With ``detail``, also per-layer
    hidden-state errors, the fraction of tokens routed differently per MoE layer, and the same
    numbers with only the attention on Triton. A dense model has no routers: ``triton`` decides."""
    from diffulex.layers.attention import Attention
    from diffulex.sampling_params import SamplingParams
    from forced_routing import ForcedRouting

    orig = engine._forward
    saved = engine.config.runtime.kernels.value
    errs, agree, per_forward = [], [], []
    free_errs, free_agree, free_flips = [], [], []
    cap = _Capture(engine.runner.model) if detail else None
    forcer = ForcedRouting(engine.runner.model)  # registered after _Capture: its routes stay the unforced ones
    routed = bool(forcer.routers)
    decisive = "triton_forced" if routed else "triton"

    def rel(a, b):
        return float((a - b).norm() / b.norm().clamp_min(1e-30))

    def both(reqs, batch_):
        runs = {}
        graphs_saved = engine.runner.graphs
        engine.runner.graphs = None
        variants = [("torch", None)] + ([("attn_only", (Attention,))] if detail else []) + [("triton", None)] + \
            ([("triton_forced", None)] if routed else [])
        for name, only in variants:
            _switch(engine, "torch")
            if name != "torch":
                _set_kernels(engine, "triton", only)
            {"torch": forcer.record, "triton_forced": forcer.force}.get(name, forcer.off)()
            if cap:
                cap.reset()
            logits = orig(reqs, batch_).float()
            runs[name] = (logits, list(cap.layers) if cap else [], list(cap.routes) if cap else [])
            if name == "triton_forced" and forcer.forced_calls != len(forcer.routers):
                raise RuntimeError(f"forced routing reached {forcer.forced_calls} of {len(forcer.routers)} routers")
        forcer.off()
        engine.runner.graphs = graphs_saved
        graphs = engine.runner.graphs
        if graphs is not None:  # the same Triton path replayed from CUDA graphs (hooks do not fire there)
            _switch(engine, "triton")
            engine.runner.graphs = graphs
            runs["graphs"] = (orig(reqs, batch_).float(), [], [])
        ref, out = runs["torch"][0], runs["triton"][0]
        dec = runs[decisive][0]
        errs.append(rel(dec, ref))
        agree.append(float((dec.argmax(-1) == ref.argmax(-1)).float().mean()))
        row = {"tokens": int(batch_.input_ids.shape[0]), "rel_l2": errs[-1], "top1": agree[-1]}
        if routed:
            free_errs.append(rel(out, ref))
            free_agree.append(float((out.argmax(-1) == ref.argmax(-1)).float().mean()))
            # With the history forced, the fraction of tokens whose own Triton router picks
            # another expert set than the reference router did (the worst layer).
            free_flips.append(max(forcer.flipped) if forcer.flipped else 0.0)
            row["free_routing"] = {"rel_l2": free_errs[-1], "top1": free_agree[-1],
                                   "max_flipped_under_forcing": free_flips[-1]}
        if "graphs" in runs:
            row["graphs_vs_eager_triton_rel_l2"] = rel(runs["graphs"][0], out)
        if detail:
            for name in ("attn_only", "triton") + (("triton_forced",) if routed else ()):
                lay = [rel(a, b) for a, b in zip(runs[name][1], runs["torch"][1])]
                route = [float((a != b).any(-1).float().mean()) for a, b in zip(runs[name][2], runs["torch"][2])]
                row[name] = {"logits_rel_l2": rel(runs[name][0], ref), "layer_rel_l2": [round(x, 4) for x in lay],
                             "routed_differently": [round(x, 3) for x in route]}
        per_forward.append(row)
        _switch(engine, "triton")
        return out

    gen = torch.Generator().manual_seed(7)
    mask_id = engine.config.model.mask_token_id
    sp = SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True)
    ids = []
    engine._forward = both
    try:
        for _ in range(batch):
            prompt = [t if t != mask_id else t + 1 for t in torch.randint(10, 200, (prompt_len,), generator=gen).tolist()]
            ids.append(engine.add_request(prompt, sp))
        for _ in range(steps):
            engine.step()
    finally:
        engine._forward = orig
        forcer.close()
        if cap:
            cap.close()
        for r in ids:
            engine.abort_request(r)
            engine._requests.pop(r, None)
        _switch(engine, saved)
    worst, top1 = max(errs), min(agree)
    ok = bool(worst < REL_TOL and top1 >= TOP1_MIN)
    g_err = [f["graphs_vs_eager_triton_rel_l2"] for f in per_forward if "graphs_vs_eager_triton_rel_l2" in f]
    if g_err:
        ok = ok and max(g_err) < 1e-2
    free = None
    if routed:
        free = dict(max_rel_l2=max(free_errs), min_top1_agreement=min(free_agree),
                    max_flipped_under_forcing=max(free_flips))
        if detail:  # the free-running Triton path, flips compounding over the layers
            free["max_routed_differently"] = max(max(f["triton"]["routed_differently"], default=0.0)
                                                 for f in per_forward)
    return dict(forwards=len(errs), max_rel_l2=worst, graphs_vs_eager_max_rel_l2=max(g_err) if g_err else None,
                min_top1_agreement=top1, ok=ok,
                criterion=f"bf16 tolerance (rel L2 < {REL_TOL}, top-1 >= {TOP1_MIN})"
                + (", forced routing" if routed else ""),
                free_routing=free, per_forward=per_forward)


def summary(res: dict) -> str:
    """One line of the decisive comparison and, for an MoE model, one of the free-routing one."""
    g = res.get("graphs_vs_eager_max_rel_l2")
    line = (f"{'ok' if res['ok'] else 'FAILED'}: logits max rel L2 {res['max_rel_l2']:.4f}, min top-1 agreement "
            f"{res['min_top1_agreement']:.3f} over {res['forwards']} forwards"
            + (f", graphs vs eager {g:.2e}" if g is not None else "") + f" [{res['criterion']}]")
    free = res.get("free_routing")
    if free:
        line += (f"\n  free routing (informative): max rel L2 {free['max_rel_l2']:.4f}, min top-1 "
                 f"{free['min_top1_agreement']:.3f}"
                 + (f", up to {100 * free['max_routed_differently']:.1f} % of tokens routed differently in a layer"
                    if "max_routed_differently" in free else "")
                 + f"; on forced inputs the Triton routers pick another expert set for up to "
                 f"{100 * free['max_flipped_under_forcing']:.1f} % of a layer's tokens")
    return line


def check_real(workdir: Path, report: list[dict]) -> bool:
    """Real shapes, random bf16 weights: the MoE mini shape at short prompts (batch 4) and the
    dense 8B shape at long prompts (batch 2, contexts past 1,500 keys: the split key axis)."""
    import shutil

    from diffulex import Diffulex

    sys.path.insert(0, str(ROOT / "experiments"))
    from benchmark import write_checkpoint

    ok = True
    for name, prompt_len, batch in (("llada2_mini", 128, 4), ("llada_8b", 1536, 2)):
        path = write_checkpoint(name, workdir / name, torch.device("cuda"))
        with Diffulex(str(path), device="cuda", dtype="bfloat16", kernels="triton", decoding_strategy="multi_bd",
                      block_size=32, buffer_size=1, page_size=32, max_model_len=prompt_len + 512,
                      max_num_batched_tokens=batch * (prompt_len + 32) + 64, enforce_eager=False) as llm:
            res = compare_backends_on_engine(llm, prompt_len=prompt_len, batch=batch)
        shutil.rmtree(workdir / name, ignore_errors=True)
        row = dict(check="real_bf16", model=name, prompt_len=prompt_len, batch=batch, **res)
        report.append(row)
        print(json.dumps(row), flush=True)
        ok &= res["ok"]
    return ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real", action="store_true", help="also the real-shape bf16 logits checks (writes ~32 GB)")
    ap.add_argument("--fp8", action="store_true", help="also the tiny families with FP8 weights (quantization=fp8)")
    ap.add_argument("--out", default=os.environ.get("OUT"))
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device", file=sys.stderr)
        return 2
    report: list[dict] = []
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    ok = check_tiny(tmp / "tiny", report, fp8=args.fp8)
    if args.real:
        ok &= check_real(tmp, report)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_check.json").write_text(json.dumps(report, indent=1))
    print("gpu_check:", "OK" if ok else "FAILED", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
