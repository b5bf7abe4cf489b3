"""Dataset loader and scorer of the bundled lm-eval tasks (``!function utils.*`` in the YAMLs).

lm-eval loads this file by path (not as a package module), so it imports only absolute names.
``load_subtask`` reads ``data/<subtask>.jsonl`` next to this file; ``process_results`` scores
an output with ``diffulex.tasks.is_correct``, the scorer of ``diffulex.tasks.evaluate`` and
``experiments/evaluate.py``, so lm-eval's ``acc`` equals Diffulex's accuracy on the same samples.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

DATA_DIR = Path(__file__).resolve().parent / "data"


def load_subtask(subtask: Optional[str] = None, **_metadata: Any) -> dict[str, Any]:
    """``{"test": Dataset}`` of one subtask (``dataset_kwargs.subtask`` in the YAML).

    lm-eval calls this with the task metadata and the model_args as keywords too; they are unused.
    """
    import datasets

    if not subtask:
        raise ValueError("diffulex lm-eval task: dataset_kwargs.subtask is not set in the task YAML")
    path = DATA_DIR / f"{subtask}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"diffulex lm-eval task {subtask!r}: {path} is missing; write it with "
                                "`python -m diffulex.integrations.lm_eval_tasks.export`")
    with open(path, encoding="utf-8") as f:
        docs = [json.loads(line) for line in f if line.strip()]
    return {"test": datasets.Dataset.from_list(docs)}


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """``{"acc": 1.0 or 0.0}``: Diffulex's ``is_correct`` on the generated text."""
    from diffulex.tasks.arithmetic import is_correct
    from diffulex.tasks.synthetic import problem_from_row

    return {"acc": float(is_correct(results[0], problem_from_row(doc)))}
