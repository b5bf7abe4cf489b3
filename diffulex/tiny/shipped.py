"""The trained tiny checkpoints shipped in the package (``diffulex/tiny/trained/<family>``).

They were written by ``python -m diffulex.train`` (see ``docs/models.md`` for each model's card)
and load through the same path as any downloaded checkpoint: nothing in the engine knows them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from diffulex.tiny.recipes import TINY_FAMILIES

TRAINED_ROOT = Path(__file__).resolve().parent / "trained"


def trained_families() -> tuple[str, ...]:
    """Families that have a shipped trained checkpoint."""
    return tuple(f for f in TINY_FAMILIES if (TRAINED_ROOT / f / "config.json").is_file())


def trained_checkpoint(family: str) -> Path:
    """The shipped trained checkpoint directory of ``family`` (read it in place; never written to)."""
    have = trained_families()
    if family not in have:
        raise ValueError(f"no trained tiny model ships for family {family!r}; families with one: "
                         f"{', '.join(have)} (the random-weight writer covers every family: trained=False)")
    return TRAINED_ROOT / family


def copy_trained(family: str, out_dir) -> Path:
    """Copy the shipped trained checkpoint of ``family`` into ``out_dir`` (created; must be empty or new)."""
    src, out = trained_checkpoint(family), Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty; pass a new or empty directory for the trained {family} checkpoint")
    out.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        if f.is_file():
            shutil.copyfile(f, out / f.name)
    return out
