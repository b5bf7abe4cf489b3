"""The demo: held-out problems through the shipped trained tiny models, one screen.

``python experiments/demo.py [--n 4]`` prints, per problem, each strategy's answer, whether it is
right, and its NFE; then each strategy's accuracy and TPF over those problems. No Hydra needed.
"""

from __future__ import annotations

import argparse
import sys

from diffulex import Diffulex
from diffulex.tasks import held_out
from diffulex.tasks.evaluation import score
from diffulex.tiny import ensure_tiny_checkpoint

# (label, family, engine keywords)
RUNS = (
    ("multi_bd 0.95", "llada2", dict(decoding_strategy="multi_bd", accept_threshold=0.95)),
    ("multi_bd 0.5", "llada2", dict(decoding_strategy="multi_bd", accept_threshold=0.5)),
    ("dmax", "llada2", dict(decoding_strategy="dmax", sampling_mode="edit")),
    ("llada d2f", "llada", dict(decoding_strategy="d2f", accept_threshold=0.9)),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2, help="held-out problems per subtask")
    args = parser.parse_args(argv)
    problems = [p for sub in ("add2", "sub2", "add3", "mark") for p in held_out(sub, args.n, seed=3)]
    results = []
    for label, family, kw in RUNS:
        llm = Diffulex(str(ensure_tiny_checkpoint(family, trained=True)), **kw)
        results.append(score(llm, problems))
        llm.exit()
    width = max(len(p.prompt) for p in problems)
    print(f"{'prompt':<{width}}  {'ref':>9}  " + "  ".join(f"{label:>16}" for label, _, _ in RUNS))
    for i, p in enumerate(problems):
        cells = []
        for r in results:
            s = r.samples[i]
            answer = s["output"].strip().split()[0] if s["output"].strip() else "''"
            cells.append(f"{answer[:9]:>9} {'ok' if s['correct'] else 'NO':>2} {s['nfe']:>2}")
        print(f"{p.prompt:<{width}}  {p.reference:>9}  " + "  ".join(f"{c:>16}" for c in cells))
    print(f"{'(answer, right, NFE)':<{width}}  {'':>9}  " + "  ".join(f"{'':>16}" for _ in RUNS))
    for (label, family, _), r in zip(RUNS, results):
        print(f"{label:>14} ({family:>6}): accuracy {r.accuracy:6.1%}  TPF {r.tpf:5.2f}  mean NFE {r.mean_nfe:5.2f}"
              f"  edits {r.edits}")
    print("`mark` asks for a 0/1 mask with exactly k ones: decoding its digits in parallel (a low threshold) "
          "breaks it.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
