"""One table for a sweep: ``python experiments/summarize.py multirun/2026-01-01/12-00-00 [--out DIR]``.

Prints the Markdown table and writes summary.md / summary.csv / summary.png (into the
sweep directory unless --out). Exits 1 when some job failed, after printing its error.
"""

import argparse
import os
import sys

os.environ.setdefault("MPLBACKEND", "Agg")

from diffulex.analysis.sweep import summarize  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("multirun_dir", help="the sweep directory of a multirun (holds one folder per job)")
    parser.add_argument("--out", default=None, help="where to write summary.{md,csv,png}; default: multirun_dir")
    args = parser.parse_args()
    try:
        result = summarize(args.multirun_dir, args.out)
    except ValueError as e:
        print(f"summarize: {e}", file=sys.stderr)
        return 2
    print(result["markdown"])
    print("wrote " + ", ".join(result["paths"]))
    return 0 if all(r["status"] == "ok" for r in result["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
