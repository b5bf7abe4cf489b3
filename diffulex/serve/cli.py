"""``python -m diffulex.serve --model PATH [--opt key=value ...] [--host H] [--port P] [--api-key K]``."""

from __future__ import annotations

import argparse
import ast
import logging
import sys
from typing import Any, Optional, Sequence

EXIT_USER_ERROR = 2


def parse_value(text: str) -> Any:
    """``0.9`` -> float, ``8`` -> int, ``true``/``false``/``none``, ``[0,1]`` -> list; else the string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_options(items: Sequence[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--opt {item!r}: expected key=value, e.g. --opt decoding_strategy=multi_bd")
        out[key.strip()] = parse_value(value)
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m diffulex.serve",
                                description="OpenAI-compatible server around one Diffulex engine (docs/serving.md)")
    p.add_argument("--model", required=True, help="checkpoint directory")
    p.add_argument("--opt", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="an engine option by its flat name (diffulex/config/aliases.py), repeatable: "
                        "--opt decoding_strategy=multi_bd --opt accept_threshold=0.9")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/* (off by default)")
    p.add_argument("--max-queue", type=int, default=256, help="requests in flight before 503 (default 256)")
    p.add_argument("--served-model-name", default=None, help="the model id clients send (default: the directory name)")
    p.add_argument("--log-level", default="info")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        options = parse_options(args.opt)
        if args.max_queue < 1:
            raise ValueError(f"--max-queue {args.max_queue}: expected an int >= 1")
        from diffulex import Diffulex

        engine = Diffulex(args.model, **options)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    from .server import serve

    try:
        serve(engine, host=args.host, port=args.port, api_key=args.api_key, max_queue=args.max_queue,
              model_name=args.served_model_name, log_level=args.log_level.lower())
    finally:
        engine.exit()
    return 0
