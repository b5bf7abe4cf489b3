"""CLI: ``python -m diffulex.train --family llada2 --out DIR [--steps N] [--set field=value ...]``.

Runs one family's shipped training settings (``diffulex.train.config.FAMILY_DEFAULTS``) with
overrides, writes the checkpoint, ``train_config.json``, ``train_log.jsonl`` and
``train_summary.json`` into DIR. Plain argparse, so it runs where Hydra is not installed.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys

from diffulex.train import TRAINABLE_FAMILIES, family_config, train


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffulex.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", required=True, choices=TRAINABLE_FAMILIES)
    parser.add_argument("--out", required=True, help="output checkpoint directory")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--device")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--max-minutes", type=float)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="any TrainConfig field, e.g. --set batch_size=128 --set lr=5e-4")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in (("steps", args.steps), ("device", args.device), ("seed", args.seed),
                                   ("max_minutes", args.max_minutes)) if v is not None}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r}: expected FIELD=VALUE")
        overrides[key] = _value(value)
    try:
        cfg = family_config(args.family, **overrides)
    except (TypeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = train(cfg, args.out, log=lambda rec: print(json.dumps(rec), flush=True))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
