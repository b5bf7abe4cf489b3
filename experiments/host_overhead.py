"""Host (CPU/Python) time of one engine decode step, phase by phase.

Builds ``multi_bd`` (block 32, page 32, buffer 1; CPU: kernels torch, fp32) on the tiny
llada2 checkpoint, adds ``batch`` prompts of 128 random tokens, and steps with the
benchmark's fixed-k sampler (exactly the k leftmost masks of each block per forward) or
the engine's naive sampler. The scheduler, ``pack_batch``, the runner's forward and the
sampler's ``decide`` are wrapped with ``time.perf_counter``; ``apply`` is the rest of
``engine.step`` (after_forward, commits, ``_apply``, StepRecords). ``host`` = step -
forward: the work a GPU forward cannot hide. On CUDA the forward is timed with CUDA events
(``fwd_gpu``; ``host`` = step - fwd_gpu, as experiments/benchmark.py) and ``decide``
includes waiting for the GPU. Medians over the measured steps, in ms::

    python experiments/host_overhead.py                      # the table
    python experiments/host_overhead.py --profile 64 --k 1   # plus a cProfile of b=64, k=1
    python experiments/host_overhead.py --device cuda --graphs
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "experiments"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from benchmark import fixed_k_sampler  # noqa: E402

import diffulex.engine.engine as engine_mod  # noqa: E402
from diffulex import Diffulex  # noqa: E402
from diffulex.sampling.naive import NaiveSampler  # noqa: E402
from diffulex.sampling_params import SamplingParams  # noqa: E402
from diffulex.tiny import ensure_tiny_checkpoint  # noqa: E402

PHASES = ("schedule", "pack", "forward", "decide")
# Inside the runner's forward (--runner-phases): bucket choice and padding, the staging copy, the
# strategy inputs, the graphs' run (g_run, of which g_fill: the static-input copies) and the logits.
RUNNER_PHASES = (("buckets", "choose", "choose"), ("buckets", "pad", "pad"), ("stager", "to_device", "stage"),
                 (None, "graph_extras", "extras"), ("graphs", "run", "g_run"), ("graphs", "_fill", "g_fill"),
                 ("model", "compute_logits", "logits"))


class PhaseTimer:
    """Wraps the phases of ``engine.step`` (instance attributes and the module's pack_batch)."""

    def __init__(self, engine, fake_forward: bool = False, cuda: bool = False, sleep_cycles: int = 0,
                 runner_phases: bool = False) -> None:
        self.engine, self.cuda, self.sleep_cycles = engine, cuda, sleep_cycles
        self.wrapped: list = []
        self.t: dict[str, float] = {}
        self.events: list = []
        self._orig_pack = engine_mod.pack_batch
        self._wrap(engine.scheduler, "schedule", "schedule")
        if fake_forward:
            engine.runner.run = self._fake_run(engine.runner.run)
        self._wrap(engine.runner, "run", "forward")
        self._wrap(engine.sampler, "decide", "decide")
        engine_mod.pack_batch = self._timed("pack", self._orig_pack)
        if runner_phases:
            for owner, name, phase in RUNNER_PHASES:
                obj = engine.runner if owner is None else getattr(engine.runner, owner, None)
                if obj is not None:
                    self._wrap(obj, name, phase)

    def _timed(self, phase: str, fn):
        def wrapper(*args, **kwargs):
            ev = None
            if self.cuda and phase == "forward":
                ev = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                ev[0].record()
            t0 = time.perf_counter()
            try:
                out = fn(*args, **kwargs)
                if ev is not None and self.sleep_cycles:
                    torch.cuda._sleep(self.sleep_cycles)  # a longer forward on the GPU, nothing more on the host
                return out
            finally:
                self.t[phase] = self.t.get(phase, 0.0) + time.perf_counter() - t0
                if ev is not None:
                    ev[1].record()
                    self.events.append(ev)
        return wrapper

    def forward_gpu_s(self) -> float:
        """GPU time of this step's forwards (after a synchronize)."""
        torch.cuda.synchronize()
        total = sum(a.elapsed_time(b) for a, b in self.events) / 1e3
        self.events = []
        return total

    @staticmethod
    def _fake_run(run):
        """Random logits [M, V] instead of the model (V from one real forward): a profile of host work only."""
        state: dict = {"gen": torch.Generator().manual_seed(0)}

        def fake(input_ids, positions, meta, extras=None):
            if "vocab" not in state:
                state["vocab"] = run(input_ids, positions, meta, extras).shape[-1]
            return torch.randn(meta.logits_indices.shape[0], state["vocab"], generator=state["gen"])
        return fake

    def _wrap(self, obj, name: str, phase: str) -> None:
        setattr(obj, name, self._timed(phase, getattr(obj, name)))
        self.wrapped.append((obj, name))

    def restore(self) -> None:
        engine_mod.pack_batch = self._orig_pack
        for obj, name in self.wrapped:
            vars(obj).pop(name, None)


def run_row(engine, k: int, batch: int, warmup: int, measure: int, prompt_len: int, profile: bool,
            fake_forward: bool = False, sampler: str = "fixed", cuda: bool = False, sleep_cycles: int = 0,
            runner_phases: bool = False) -> dict:
    """Step ``warmup + measure`` times with ``batch`` fresh requests; medians of the phases (s)."""
    engine.sampler = fixed_k_sampler(k)(engine.config) if sampler == "fixed" else NaiveSampler(engine.config)
    gen = torch.Generator().manual_seed(1000 + batch)
    mask_id = engine.config.model.mask_token_id
    room = (engine.config.runtime.max_model_len // 32) * 32 - prompt_len  # whole blocks under the limit
    max_tokens = min(-(-k * (warmup + measure + 4) // 32) * 32, room)
    measure = min(measure, max_tokens // k - warmup - 1)  # never time the step that finishes the requests
    sp = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    ids = []
    for _ in range(batch):
        prompt = torch.randint(10, 200, (prompt_len,), generator=gen).tolist()
        ids.append(engine.add_request([t if t != mask_id else t + 1 for t in prompt], sp))
    timer = PhaseTimer(engine, fake_forward, cuda, sleep_cycles, runner_phases)
    rows: list[dict] = []
    prof = cProfile.Profile() if profile else None
    try:
        for i in range(warmup + measure):
            timer.t = {}
            if cuda:
                torch.cuda.synchronize()
            if prof is not None and i >= warmup:
                prof.enable()
            t0 = time.perf_counter()
            engine.step()
            step = time.perf_counter() - t0
            if prof is not None:
                prof.disable()
            t = {ph: timer.t.get(ph, 0.0) for ph in PHASES + tuple(p for _, _, p in RUNNER_PHASES)}
            t["step"] = step
            t["apply"] = step - sum(t[ph] for ph in PHASES)
            t["fwd_gpu"] = timer.forward_gpu_s() if cuda else t["forward"]
            t["host"] = step - t["fwd_gpu"]
            rows.append(t)
    finally:
        timer.restore()
        for r in ids:
            engine.abort_request(r)
            engine._requests.pop(r, None)
    if prof is not None:
        print(f"\n--- cProfile b={batch} k={k} ({measure} steps) ---")
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    meas = rows[warmup:]
    out = {key: statistics.median(r[key] for r in meas) for key in meas[0]}
    out["steps"] = len(meas)
    return out


def _cycles_per_ms() -> float:
    """GPU clock cycles of ``torch.cuda._sleep`` per millisecond (measured)."""
    torch.cuda._sleep(1_000_000)  # warm-up, clocks up
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    torch.cuda._sleep(20_000_000)
    b.record()
    b.synchronize()
    return 20_000_000 / a.elapsed_time(b)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--measure", type=int, default=20)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--record-trajectory", action="store_true", help="record per-token trajectories too")
    ap.add_argument("--profile", type=int, nargs="*", default=[], help="batch sizes to cProfile")
    ap.add_argument("--k", type=int, default=None, help="only profile this k")
    ap.add_argument("--sampler", choices=("fixed", "naive"), default="fixed",
                    help="fixed: the benchmark's fixed-k sampler; naive: the engine's (threshold 0.95 on random "
                         "weights: one token per block and step, whatever --ks says)")
    ap.add_argument("--fake-forward", action="store_true",
                    help="random logits instead of the model after the first forward (host-only profiles)")
    ap.add_argument("--runner-phases", action="store_true",
                    help="also time the parts of the runner's forward (" + ", ".join(p for _, _, p in RUNNER_PHASES)
                         + "; host time, not GPU time)")
    ap.add_argument("--model", default="llada2", help="tiny family to run (default llada2)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--kernels", default=None, help="runtime.kernels (default: torch on CPU, triton on CUDA)")
    ap.add_argument("--graphs", action="store_true", help="CUDA graphs (CUDA only)")
    ap.add_argument("--gpu-ms", type=float, default=0.0,
                    help="CUDA: pad each forward with this much GPU time (torch.cuda._sleep) to mimic a real "
                         "model's forward, so that work queued behind it overlaps as it would")
    args = ap.parse_args(argv)
    cuda = args.device == "cuda"
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    root = os.environ.get("DIFFULEX_TINY_ROOT") or str(Path(tempfile.gettempdir()) / "diffulex_tiny")
    path = ensure_tiny_checkpoint(args.model, root=root)
    b_max = max(args.batches)
    kernels = args.kernels or ("triton" if cuda else "torch")
    sleep_cycles = _cycles_per_ms() * args.gpu_ms if cuda and args.gpu_ms > 0 else 0
    engine = Diffulex(str(path), decoding_strategy="multi_bd", block_size=32, buffer_size=1, page_size=32,
                      kernels=kernels, dtype="bfloat16" if cuda else "float32", device=args.device,
                      enforce_eager=not (cuda and args.graphs),
                      max_num_seqs=b_max, max_num_batched_tokens=b_max * (args.prompt_len + 64) + 64,
                      max_model_len=512,  # the tiny checkpoint's maximum
                      record_trajectory=args.record_trajectory)
    cols = ("host", "schedule", "pack", "decide", "apply", "forward", "fwd_gpu", "step")
    if args.runner_phases:
        cols += tuple(p for _, _, p in RUNNER_PHASES)
    dev = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"multi_bd tiny {args.model}, {dev}, kernels {kernels}, graphs {cuda and args.graphs}, sampler {args.sampler}, "
          f"record_trajectory={args.record_trajectory}, fake_forward={args.fake_forward}, gpu_ms+={args.gpu_ms}; "
          f"median ms per step "
          f"(host = step - forward GPU time)")
    print(f"{'k':>3} {'batch':>5} {'steps':>5} " + " ".join(f"{c:>9}" for c in cols))
    try:
        for k in args.ks:
            for b in args.batches:
                prof = b in args.profile and (args.k is None or args.k == k)
                r = run_row(engine, k, b, args.warmup, args.measure, args.prompt_len, prof, args.fake_forward,
                            args.sampler, cuda, int(sleep_cycles), args.runner_phases)
                print(f"{k:>3} {b:>5} {r['steps']:>5} " + " ".join(f"{r[c] * 1e3:9.3f}" for c in cols), flush=True)
    finally:
        engine.exit()


if __name__ == "__main__":
    main()
