"""CLI: ``python -m diffulex.tiny --family FAMILY --out DIR [--seed N | --trained]``.

``--trained`` copies the shipped trained checkpoint (it never trains; training is
``python -m diffulex.train``); without it a random-weight checkpoint is written.
"""

from __future__ import annotations

import argparse
import sys

from diffulex.tiny import TINY_FAMILIES, copy_trained, write_tiny_checkpoint


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, write the checkpoint, print its path."""
    parser = argparse.ArgumentParser(prog="python -m diffulex.tiny", description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", required=True, choices=TINY_FAMILIES)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trained", action="store_true", help="copy the shipped trained checkpoint")
    args = parser.parse_args(argv)
    if args.trained:
        try:
            print(copy_trained(args.family, args.out))
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    print(write_tiny_checkpoint(args.family, args.out, seed=args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
