"""Where an experiment's prompts come from: an inline list, a file, or a prompt set shipped here.

Sources (``experiment.*``): ``prompts`` (inline list), ``prompt_file`` (``.txt``: one prompt
per non-empty line; ``.jsonl``: one object per line with ``"prompt"`` and optional
``"reference"``) and ``prompt_set`` (a name under ``diffulex/integrations/prompt_sets/``,
same JSONL format). ``prompt_set`` is the default source: it is used when neither
``prompts`` nor ``prompt_file`` is given; giving both of those is an error.
References make a quality metric possible (``diffulex.analysis.quality``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

PROMPT_SET_DIR = Path(__file__).with_name("prompt_sets")


@dataclass(frozen=True)
class Prompt:
    """One prompt and, when known, the text a correct answer contains."""

    text: str
    reference: Optional[str] = None


def prompt_sets() -> list[str]:
    """Names of the prompt sets shipped with Diffulex."""
    return sorted(p.stem for p in PROMPT_SET_DIR.glob("*.jsonl"))


def load_prompts(prompts: Optional[Sequence[Any]] = None, prompt_file: Optional[str] = None,
                 prompt_set: Optional[str] = None) -> tuple[list[Prompt], str]:
    """(prompts, a label of their source); see the module docstring for the rules."""
    if prompts and prompt_file:
        raise ValueError("experiment.prompts and experiment.prompt_file are both set; keep one "
                         "(e.g. experiment.prompts=null)")
    if prompts:
        return [Prompt(str(p)) for p in prompts], "experiment.prompts"
    if prompt_file:
        return read_prompt_file(prompt_file), f"experiment.prompt_file={prompt_file}"
    if prompt_set:
        path = PROMPT_SET_DIR / f"{prompt_set}.jsonl"
        if str(prompt_set) not in prompt_sets():  # a name, never a path (a file goes through prompt_file)
            raise ValueError(f"experiment.prompt_set={prompt_set!r} is not a shipped prompt set; "
                             f"choose one of {prompt_sets()} or pass experiment.prompt_file=<path>")
        return read_prompt_file(str(path)), f"experiment.prompt_set={prompt_set}"
    raise ValueError("no prompts: set experiment.prompts, experiment.prompt_file or experiment.prompt_set "
                     f"(shipped sets: {prompt_sets()})")


def read_prompt_file(path: str) -> list[Prompt]:
    """Read a ``.txt`` or ``.jsonl`` prompt file (format in the module docstring)."""
    if not os.path.isfile(path):
        raise ValueError(f"experiment.prompt_file={path!r} does not exist")
    lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.endswith(".txt"):
        out = [Prompt(line) for line in lines]
    elif path.endswith(".jsonl"):
        out = [_jsonl_prompt(path, i, line) for i, line in enumerate(lines, start=1)]
    else:
        raise ValueError(f"experiment.prompt_file={path!r}: use a .txt (one prompt per line) or a .jsonl "
                         "file (objects with a 'prompt' field)")
    if not out:
        raise ValueError(f"experiment.prompt_file={path!r} holds no prompts")
    return out


def _jsonl_prompt(path: str, lineno: int, line: str) -> Prompt:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{lineno} is not JSON: {e}") from e
    if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
        raise ValueError(f"{path}:{lineno}: each line must be an object with a string 'prompt' field")
    ref = obj.get("reference")
    return Prompt(obj["prompt"], None if ref is None else str(ref))
