"""Write the JSONL the bundled lm-eval tasks read: ``python -m diffulex.integrations.lm_eval_tasks.export``.

``data/<subtask>.jsonl`` holds ``to_jsonl_rows(held_out(subtask, n, seed=1))``: the held-out
problems that ``ArithmeticTask(subtask, n=n, seed=1)`` (``conf/task/<subtask>.yaml``,
``experiments/evaluate.py``) evaluates, in the same order, so ``--limit L`` in lm-eval and
``limit=L`` in Diffulex take the same first ``L`` samples. ``--check`` rewrites nothing and
exits 1 when a shipped file differs from what this module produces (tests/test_lm_eval.py
checks the same).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

TASK_DIR = Path(__file__).resolve().parent
DATA_DIR = TASK_DIR / "data"
SEED = 1
# subtask -> held-out problems (mul: only ~20 distinct held-out products exist, docs/models.md).
SIZES: dict[str, int] = {"add2": 200, "sub2": 200, "add3": 200, "add4": 200, "mul": 20, "mark": 200}


def task_name(subtask: str) -> str:
    """The lm-eval task name of a subtask: ``diffulex_<subtask>``."""
    return f"diffulex_{subtask}"


def rows(subtask: str) -> list[dict[str, Any]]:
    """The JSONL rows of one subtask (prompt, reference, subtask, value, items)."""
    from diffulex.tasks.arithmetic import held_out
    from diffulex.tasks.synthetic import to_jsonl_rows

    if subtask not in SIZES:
        raise ValueError(f"no bundled lm-eval task for subtask {subtask!r}; bundled: {sorted(SIZES)}")
    return to_jsonl_rows(held_out(subtask, SIZES[subtask], seed=SEED))


def jsonl_text(subtask: str) -> str:
    """The exact text of ``data/<subtask>.jsonl``."""
    return "".join(json.dumps(row) + "\n" for row in rows(subtask))


def export(dest: Optional[Path] = None) -> list[Path]:
    """(Re)write every ``<subtask>.jsonl`` under ``dest`` (default: the shipped ``data/``)."""
    dest = Path(dest) if dest is not None else DATA_DIR
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for subtask in SIZES:
        path = dest / f"{subtask}.jsonl"
        path.write_text(jsonl_text(subtask), encoding="utf-8")
        written.append(path)
    return written


def stale(dest: Optional[Path] = None) -> list[str]:
    """Subtasks whose file under ``dest`` is missing or differs from :func:`jsonl_text`."""
    dest = Path(dest) if dest is not None else DATA_DIR
    out = []
    for subtask in SIZES:
        path = dest / f"{subtask}.jsonl"
        if not path.is_file() or path.read_text(encoding="utf-8") != jsonl_text(subtask):
            out.append(subtask)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffulex.integrations.lm_eval_tasks.export",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, default=None, help=f"output directory (default: {DATA_DIR})")
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a file is stale")
    args = parser.parse_args(argv)
    if args.check:
        bad = stale(args.dest)
        for subtask in bad:
            print(f"stale: {subtask}.jsonl (run python -m diffulex.integrations.lm_eval_tasks.export)")
        return 1 if bad else 0
    for path in export(args.dest):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
