"""Reading a task's local data files: JSONL (optionally gzipped), with errors that say where."""

from __future__ import annotations

import gzip
import json
import os
from typing import Any, Sequence


def read_jsonl(path: str, task: str, expected: str, required: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Objects of a ``.jsonl`` / ``.jsonl.gz`` file; blank lines skipped.

    A missing path is an error naming it and ``expected`` (the format and where to get it); a line
    that is not a JSON object, or lacks a ``required`` field, is an error naming file and line.
    Nothing is ever downloaded.
    """
    if not path:
        raise ValueError(f"task {task} needs a data file: set task.path=<file> ({expected})")
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise ValueError(f"task {task}: data file {path!r} does not exist; expected {expected}. "
                         "Nothing is downloaded: put the file there or point task.path at it")
    opener = gzip.open if path.endswith(".gz") else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno}); "
                                 f"expected {expected}") from e
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: a line must be a JSON object, got {type(obj).__name__}")
            missing = [k for k in required if k not in obj]
            if missing:
                raise ValueError(f"{path}:{lineno}: missing field(s) {missing}; expected {expected}")
            rows.append(obj)
    if not rows:
        raise ValueError(f"task {task}: {path} holds no samples; expected {expected}")
    return rows
