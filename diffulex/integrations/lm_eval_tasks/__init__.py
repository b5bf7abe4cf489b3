"""lm-evaluation-harness task files for the trained tiny models' held-out synthetic tasks.

This directory is an lm-eval ``--include_path``: one YAML per task (``diffulex_add2``,
``diffulex_sub2``, ``diffulex_add3``, ``diffulex_add4``, ``diffulex_mul``, ``diffulex_mark``),
the group ``diffulex_arith``, ``utils.py`` (the dataset loader and the scorer) and the data in
``data/<subtask>.jsonl``, written by ``python -m diffulex.integrations.lm_eval_tasks.export``.
``diffulex-lm-eval`` adds the directory to ``--include_path`` by itself; from Python,
``TaskManager(include_path=TASK_DIR)``.
"""

from pathlib import Path

TASK_DIR = Path(__file__).resolve().parent

__all__ = ["TASK_DIR"]
