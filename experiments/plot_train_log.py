"""Plot training loss curves: ``python experiments/plot_train_log.py OUT.png DIR [DIR ...]``.

Each DIR is a checkpoint written by ``diffulex.train`` (its ``train_log.jsonl``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    out, dirs = Path(argv[0]), [Path(d) for d in argv[1:]]
    fig, ax = plt.subplots(figsize=(7, 4))
    for d in dirs:
        log = [json.loads(line) for line in (d / "train_log.jsonl").read_text().splitlines()]
        family = json.loads((d / "train_config.json").read_text())["family"]
        ax.plot([r["step"] for r in log], [r["mean_loss"] for r in log], label=family)
    ax.set_yscale("log")
    ax.set_xlabel("step (batch 1024)")
    ax.set_ylabel("weighted diffusion loss (mean over 100 steps)")
    ax.set_title("training loss of the shipped tiny models")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
