"""HumanEval and MBPP from the user's local copies, scored pass@1 by running the tests.

Running model-written code is opt-in: ``allow_code_execution=True`` (``task.allow_code_execution=true``),
as lm-eval's ``HF_ALLOW_CODE_EVAL=1``. Each program runs in a fresh ``python -I`` subprocess in a
temporary directory with a timeout; it passes when it exits 0. That isolates the evaluator from a
crash or a hang, not the machine from hostile code: run untrusted models in a sandbox.

Data (nothing is downloaded):

* HumanEval: ``HumanEval.jsonl`` or ``.jsonl.gz`` (openai/human-eval), one ``{"task_id", "prompt",
  "test", "entry_point", ...}`` per line. The prompt is the function signature and docstring; the
  program is ``prompt + completion + test + check(entry_point)``.
* MBPP: ``mbpp.jsonl`` (google-research/mbpp; or the sanitized set), one ``{"task_id", "text",
  "test_list", ...}`` per line. The prompt states the problem and the first test; the program is
  ``test_setup_code + completion + all tests``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from typing import Any, Optional

from diffulex.tasks.base import Sample, Task
from diffulex.tasks.files import read_jsonl

HUMANEVAL_FORMAT = ('HumanEval JSONL (.jsonl or .jsonl.gz from openai/human-eval), one {"task_id", "prompt", '
                    '"test", "entry_point"} object per line')
MBPP_FORMAT = 'MBPP JSONL (google-research/mbpp), one {"task_id", "text", "test_list"} object per line'


def run_program(source: str, timeout_s: float = 10.0) -> tuple[bool, str]:
    """(passed, why): run ``source`` with this Python in a temp dir; passed when it exits 0 in time."""
    with tempfile.TemporaryDirectory(prefix="diffulex-code-") as tmp:
        path = os.path.join(tmp, "program.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(source)
        try:
            proc = subprocess.run([sys.executable, "-I", path], cwd=tmp, capture_output=True, text=True,
                                  timeout=timeout_s, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return False, f"timed out after {timeout_s:g} s"
    if proc.returncode == 0:
        return True, "passed"
    tail = (proc.stderr or proc.stdout).strip().splitlines()
    return False, tail[-1] if tail else f"exit code {proc.returncode}"


class CodeTask(Task):
    """Shared part of HumanEval and MBPP: the execution switch and pass@1 scoring."""

    default_max_tokens = 512
    data_format = ""
    required: tuple[str, ...] = ()

    def __init__(self, path: Optional[str] = None, allow_code_execution: bool = False, timeout_s: float = 10.0,
                 **kw: Any) -> None:
        super().__init__(**kw)
        self.path, self.allow_code_execution, self.timeout_s = path, allow_code_execution, timeout_s

    def load(self) -> list[Sample]:
        if not self.allow_code_execution:
            raise ValueError(f"task {self.name} scores by running model-written code; set "
                             "task.allow_code_execution=true to allow it (preferably inside a sandbox)")
        rows = read_jsonl(self.path, self.name, self.data_format, required=self.required)
        return [self.sample(r, i) for i, r in enumerate(rows)]

    def sample(self, row: dict[str, Any], index: int) -> Sample:
        raise NotImplementedError

    def program(self, output: str, sample: Sample) -> str:
        raise NotImplementedError

    def extract(self, output: str) -> Optional[str]:
        return output

    def is_correct(self, output: str, sample: Sample) -> bool:
        passed, _ = run_program(self.program(output, sample), self.timeout_s)
        return passed

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "path": self.path, "timeout_s": self.timeout_s}


class HumanEval(CodeTask):
    name = "humaneval"
    default_stop = ("\nclass", "\ndef", "\n#", "\nif __name__", "\nprint(")
    data_format = HUMANEVAL_FORMAT
    required = ("task_id", "prompt", "test", "entry_point")

    def sample(self, row: dict[str, Any], index: int) -> Sample:
        return Sample(id=str(row["task_id"]), prompt=row["prompt"], reference=row.get("canonical_solution", ""),
                      data={"test": row["test"], "entry_point": row["entry_point"]})

    def program(self, output: str, sample: Sample) -> str:
        return (f"{sample.prompt}{output}\n\n{sample.data['test']}\n\n"
                f"check({sample.data['entry_point']})\n")


class MBPP(CodeTask):
    name = "mbpp"
    default_stop = ("\nclass", "\nif __name__", "\nprint(", "\nassert", '\n"""')
    data_format = MBPP_FORMAT
    required = ("task_id", "text", "test_list")

    def sample(self, row: dict[str, Any], index: int) -> Sample:
        tests = list(row["test_list"])
        prompt = f'"""\n{row["text"]}\n{tests[0] if tests else ""}\n"""\n'
        return Sample(id=str(row["task_id"]), prompt=prompt, reference=row.get("code", ""),
                      data={"tests": tests, "setup": row.get("test_setup_code", "")})

    def program(self, output: str, sample: Sample) -> str:
        return "\n".join([sample.data["setup"], output, *sample.data["tests"], ""])
