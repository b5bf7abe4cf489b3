"""CLI: ``python -m diffulex.tiny --family FAMILY --out DIR [--seed N]``."""

from __future__ import annotations

import argparse
import sys

from diffulex.tiny import TINY_FAMILIES, write_tiny_checkpoint


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, write the checkpoint, print its path."""
    parser = argparse.ArgumentParser(prog="python -m diffulex.tiny", description=__doc__)
    parser.add_argument("--family", required=True, choices=TINY_FAMILIES)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(write_tiny_checkpoint(args.family, args.out, seed=args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
