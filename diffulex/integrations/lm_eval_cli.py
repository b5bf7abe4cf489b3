"""``diffulex-lm-eval``: lm-eval's own command line with the ``diffulex`` model and tasks available.

``diffulex-lm-eval --model diffulex --model_args pretrained=DIR,decoding_strategy=multi_bd --tasks
diffulex_add2`` takes exactly lm-eval's arguments (``run``, ``ls``, ``validate`` and the legacy form
without a subcommand). lm-eval 0.4.13 has no plugin discovery for models, so the plain ``lm_eval``
command cannot see a model that lives outside its package; this one imports
:mod:`diffulex.integrations.lm_eval_model` (which registers ``diffulex``), then parses the
arguments with lm-eval's ``HarnessCLI`` and, before executing them:

* adds the bundled task directory (``diffulex/integrations/lm_eval_tasks``) to ``--include_path``,
  before the path(s) the user gave (on the command line or in ``--config``), which stay and win
  on a task name clash;
* for ``--model diffulex`` only: ``--batch_size`` unset means ``auto`` (every request in one
  ``generate`` call, the engine batching them) instead of lm-eval's 1, and ``--device`` unset means
  ``auto`` (CUDA when available) instead of lm-eval's ``cuda:0``; ``batch_size``,
  ``max_batch_size`` or ``device`` given in ``--model_args`` move to lm-eval's flag of that
  name (lm-eval would pass the keyword twice).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

PROG = "diffulex-lm-eval"
# lm-eval's flags that it also passes to the model's constructor.
LM_EVAL_FLAGS = ("batch_size", "max_batch_size", "device")


def task_dir() -> str:
    """The bundled lm-eval task directory."""
    from diffulex.integrations.lm_eval_tasks import TASK_DIR

    return str(TASK_DIR)


def include_paths(user: Any) -> list[str]:
    """The bundled task directory, then the user's path(s): a list, or a str that may join several
    with ``os.pathsep`` (the form lm-eval's help shows). lm-eval lets later paths override earlier
    ones, so a user's task of the same name wins over a bundled one."""
    if not user:
        given: list[str] = []
    elif isinstance(user, (list, tuple)):
        given = [str(p) for p in user]
    else:
        given = [p for p in str(user).split(os.pathsep) if p]
    ours = task_dir()
    return [ours, *(p for p in given if Path(p).resolve() != Path(ours))]


def _config_file(config_path: Optional[str]) -> dict[str, Any]:
    """A ``--config`` YAML's values (its own ``include_path``, ``model`` ... that the adjusted command
    line values must respect); {} when there is none (lm-eval reports a missing file itself)."""
    if not config_path or not Path(config_path).is_file():
        return {}
    import yaml

    data = yaml.safe_load(Path(config_path).read_text())
    return data if isinstance(data, dict) else {}


def adjust(args: Any) -> Any:
    """Apply the bundled include path and the diffulex defaults to a parsed lm-eval namespace."""
    config = _config_file(getattr(args, "config", None))
    if hasattr(args, "include_path"):
        args.include_path = include_paths(args.include_path or config.get("include_path"))
    model = getattr(args, "model", None) or config.get("model")
    if getattr(args, "command", None) == "run" and model == "diffulex":
        # lm-eval passes its own batch_size / max_batch_size / device next to model_args, so the same
        # key in model_args would be a duplicate keyword: move it to the flag.
        model_args = getattr(args, "model_args", None) or {}
        for name in LM_EVAL_FLAGS:
            if name in model_args:
                if getattr(args, name, None) is not None:
                    raise SystemExit(f"{PROG}: {name} is given twice (--{name} and model_args {name}=); "
                                     "give it once")
                setattr(args, name, model_args.pop(name))
        for name in ("batch_size", "device"):
            if getattr(args, name, None) is None and config.get(name) is None:
                setattr(args, name, "auto")
    return args


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Run lm-eval's CLI on ``argv`` (default ``sys.argv[1:]``) with ``diffulex`` registered."""
    import diffulex.integrations.lm_eval_model  # noqa: F401  (registers the "diffulex" model)
    from lm_eval._cli import HarnessCLI
    from lm_eval.utils import setup_logging

    # HarnessCLI reads sys.argv itself (it inserts "run" for the legacy form without a subcommand).
    sys.argv = [PROG, *(sys.argv[1:] if argv is None else list(argv))]
    setup_logging()
    parser = HarnessCLI()
    args = adjust(parser.parse_args())
    parser.execute(args)


if __name__ == "__main__":
    main()
