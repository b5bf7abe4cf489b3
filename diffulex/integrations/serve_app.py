"""The Hydra side of the server (``experiments/serve.py``): composed config -> Config -> engine -> server.

Engine options come from ``conf/config.yaml``'s groups exactly as for ``experiments/generate.py``
(``strategy=multi_bd strategy.block_size=8 model=trained_llada2``); server options from
``experiment.serve`` (a free-form node; add keys with ``+``)::

    python experiments/serve.py strategy.accept_threshold=0.9 +experiment.serve.port=8001

Keys of ``experiment.serve``: ``host`` (127.0.0.1), ``port`` (8000), ``api_key`` (null),
``max_queue`` (256), ``model_name`` (null: the checkpoint directory's name), ``log_level`` (info).
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, OmegaConf

from diffulex import Diffulex
from diffulex.integrations.builders import build_components
from diffulex.integrations.hydra_store import config_from_hydra

SERVE_KEYS = {"host": "127.0.0.1", "port": 8000, "api_key": None, "max_queue": 256, "model_name": None,
              "log_level": "info"}


def serve_options(cfg: DictConfig) -> dict[str, Any]:
    """``experiment.serve`` with defaults; an unknown key is a ValueError naming it."""
    exp = cfg.get("experiment") or {}
    node = exp.get("serve") if hasattr(exp, "get") else None
    given = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node or {})
    unknown = sorted(set(given) - set(SERVE_KEYS))
    if unknown:
        raise ValueError(f"experiment.serve has no option(s) {unknown}; its options are {sorted(SERVE_KEYS)}")
    out = {**SERVE_KEYS, **given}
    if not isinstance(out["port"], int) or not 0 <= out["port"] < 65536:
        raise ValueError(f"experiment.serve.port={out['port']!r} is invalid: allowed an int in [0, 65535]")
    if not isinstance(out["max_queue"], int) or out["max_queue"] < 1:
        raise ValueError(f"experiment.serve.max_queue={out['max_queue']!r} is invalid: allowed an int >= 1")
    return out


def run_server(cfg: DictConfig) -> None:
    """Build the engine from the composed config and serve until Ctrl-C."""
    options = serve_options(cfg)
    config = config_from_hydra(cfg)
    logging.getLogger("diffulex.serve").setLevel(str(options["log_level"]).upper())
    from diffulex.serve.server import serve  # the serve extra (FastAPI, uvicorn)

    with Diffulex(config, components=build_components(cfg.get("components"), config)) as llm:
        serve(llm, host=options["host"], port=options["port"], api_key=options["api_key"],
              max_queue=options["max_queue"], model_name=options["model_name"],
              log_level=str(options["log_level"]).lower())
