"""Hydra launcher / sweeper plugins the presets need, with an install hint when one is missing.

Hydra reports a missing plugin as "Could not find 'hydra/launcher/joblib'"; the experiment
scripts call :func:`check_plugins` on their command line first, so the user reads which extra
to install instead.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Optional, Sequence

# command-line choice -> (plugin module, pip package)
PLUGINS = {
    "hydra/launcher=local": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher"),
    "hydra/launcher=joblib": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher"),
    "hydra/launcher=slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    "hydra/launcher=submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    "hydra/launcher=submitit_local": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    "hydra/sweeper=search": ("hydra_plugins.hydra_optuna_sweeper", "hydra-optuna-sweeper"),
    "hydra/sweeper=optuna": ("hydra_plugins.hydra_optuna_sweeper", "hydra-optuna-sweeper"),
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the hydra_plugins namespace itself is absent
        return False


def missing_plugin(argv: Sequence[str]) -> Optional[str]:
    """The install hint for the first chosen plugin preset that is not installed, else None."""
    for arg in argv:
        if arg in PLUGINS and not _installed(PLUGINS[arg][0]):
            return (f"{arg} needs the Hydra plugin {PLUGINS[arg][1]}, which is not installed; "
                    f"install it with: pip install -e '.[launchers]'  (or: pip install {PLUGINS[arg][1]})")
    return None


def check_plugins(argv: Sequence[str] = ()) -> None:
    """Exit with code 2 and the install hint when the command line picks a missing plugin."""
    hint = missing_plugin(list(argv) or sys.argv[1:])
    if hint:
        print(f"error: {hint}", file=sys.stderr)
        raise SystemExit(2)
