"""Check that TP / DP / EP give the same greedy tokens as one rank (run on a multi-GPU host).

    python experiments/parallel_check.py [--device cuda] [--dtype float32]

Prints one line per topology and exits non-zero on any difference.
"""

from __future__ import annotations

import argparse
import sys
import tempfile

from diffulex import Diffulex, SamplingParams
from diffulex.tiny import ensure_tiny_checkpoint

TOPOLOGIES = {"tp2": dict(tensor_parallel_size=2), "dp2": dict(data_parallel_size=2, enable_prefix_caching=False),
              "ep2": dict(expert_parallel_size=2)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--families", default="llada2,sdar_moe,dream")
    args = ap.parse_args()
    root = tempfile.mkdtemp()
    prompts = [[20 + i, 30 + i, 40 + i][: 1 + i % 3] * (1 + i) for i in range(6)]
    failed = 0
    for family in args.families.split(","):
        path = str(ensure_tiny_checkpoint(family, root=root))
        base = dict(block_size=8, page_size=8, dtype=args.dtype, device=args.device, enforce_eager=True)
        with Diffulex(path, **base) as llm:
            want = [t.token_ids for t in llm.generate(prompts, SamplingParams(max_tokens=24))]
        for name, topo in TOPOLOGIES.items():
            if name == "ep2" and family == "dream":
                continue  # dense model: no experts to split
            with Diffulex(path, **base, **topo) as llm:
                got = [t.token_ids for t in llm.generate(prompts, SamplingParams(max_tokens=24))]
            ok = got == want
            failed += not ok
            print(f"{family:10s} {name}: {'same tokens as 1 rank' if ok else 'DIFFERENT'} "
                  f"({len(prompts)} prompts, {args.device}, {args.dtype})", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
