"""Held-out accuracy of the shipped trained tiny models, per strategy and subtask (docs/models.md).

``python experiments/trained_report.py [--n 200]`` prints two Markdown tables: accuracy / TPF per
(model, strategy) and subtask at the strategies' shipped settings, then the threshold sweep on
``mark`` (the task where parallel decoding costs accuracy) with edits per 100 answers.
"""

from __future__ import annotations

import argparse
import sys

from diffulex import Diffulex
from diffulex.tasks import held_out
from diffulex.tasks.evaluation import score
from diffulex.tiny import ensure_tiny_checkpoint

SUBTASKS = ("add2", "sub2", "add3", "add4", "mul", "mark")
RUNS = (("llada2", "multi_bd", {"accept_threshold": 0.95}), ("llada2", "dmax", {"sampling_mode": "edit"}),
        ("llada", "vanilla", {}), ("llada", "d2f", {}), ("sdar", "multi_bd", {"accept_threshold": 0.95}))
SWEEP = (("llada2", "multi_bd", {}), ("llada2", "multi_bd", {"sampling_mode": "edit"}),
         ("llada2", "dmax", {"sampling_mode": "edit"}), ("llada", "d2f", {}))
THRESHOLDS = (0.95, 0.9, 0.7, 0.5)


def _engine(family: str, strategy: str, kw: dict) -> Diffulex:
    return Diffulex(str(ensure_tiny_checkpoint(family, trained=True)), decoding_strategy=strategy, **kw)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="held-out problems per subtask")
    args = parser.parse_args(argv)
    sets = {s: held_out(s, min(args.n, 20) if s == "mul" else args.n, seed=1) for s in SUBTASKS}
    print("| model | strategy | " + " | ".join(f"{s} acc / TPF" for s in SUBTASKS) + " |")
    print("|---|---|" + "---|" * len(SUBTASKS))
    for family, strategy, kw in RUNS:
        llm = _engine(family, strategy, kw)
        cells = [score(llm, sets[s]) for s in SUBTASKS]
        llm.exit()
        label = strategy + "".join(f" {k}={v}" for k, v in kw.items())
        print(f"| {family} | {label} | " + " | ".join(f"{r.accuracy:.3f} / {r.tpf:.1f}" for r in cells) + " |",
              flush=True)
    print("\n| model | strategy | accept_threshold | mark accuracy | TPF | mean NFE | edits / 100 answers |")
    print("|---|---|---|---|---|---|---|")
    for family, strategy, kw in SWEEP:
        for th in THRESHOLDS:
            llm = _engine(family, strategy, {**kw, "accept_threshold": th})
            r = score(llm, sets["mark"])
            llm.exit()
            label = strategy + "".join(f" {k}={v}" for k, v in kw.items())
            print(f"| {family} | {label} | {th} | {r.accuracy:.3f} | {r.tpf:.2f} | {r.mean_nfe:.2f} | "
                  f"{r.edits_per_100:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
