"""Read an offline wandb run (``run-<id>.wandb``) back into Python: config, history rows, summary.

wandb 0.31 ships no Python reader for its transaction log, so this decodes the file
directly: a 7-byte header (``:W&B``, magic 0xBEE1, version 0) followed by the
LevelDB log format — 32 KiB blocks of chunks, each ``crc32c(4) length(2) type(1) data``,
with FULL / FIRST / MIDDLE / LAST chunk types — whose records are ``wandb_internal_pb2.Record``
protobufs. Tests use it to check what the step logger wrote; notebooks may too.
"""

from __future__ import annotations

import glob
import json
import os
import struct
from dataclasses import dataclass, field
from typing import Any, Iterator

from wandb.proto import wandb_internal_pb2

_HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    """What an offline run file holds: the run config, every history row, the final summary."""

    path: str
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    group: str = ""


def find_run_file(root: str) -> str:
    """The single ``*.wandb`` file under ``root`` (a run dir or a wandb dir); error if not exactly one."""
    # wandb/latest-run is a symlink to the newest run folder: count each file once.
    found = sorted({os.path.realpath(p) for p in glob.glob(os.path.join(root, "**", "*.wandb"), recursive=True)})
    if len(found) != 1:
        raise ValueError(f"expected one offline wandb run file under {root}, found {len(found)}: {found}")
    return found[0]


def _records(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(_HEADER):
        raise ValueError(f"{path} is not a wandb transaction log (bad header {data[:7]!r})")
    pos, pending = len(_HEADER), b""
    while pos + 7 <= len(data):
        room = _BLOCK - pos % _BLOCK
        if room < 7:  # block trailer too small for a chunk header: zero padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:  # zero padding at the end of a block
            pos += _BLOCK - pos % _BLOCK if pos % _BLOCK else 0
            continue
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk
            pending = b""
        else:
            raise ValueError(f"{path}: unknown chunk type {kind} at byte {pos}")


def _items(items: Any) -> dict[str, Any]:
    out = {}
    for item in items:
        key = item.key or "/".join(item.nested_key)
        out[key] = json.loads(item.value_json)
    return out


def read_offline_run(root: str) -> OfflineRun:
    """Decode the offline run under ``root`` (see :func:`find_run_file`)."""
    path = find_run_file(root)
    run = OfflineRun(path=path)
    for raw in _records(path):
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run.group = rec.run.run_group
            run.config.update(_items(rec.run.config.update))
        elif kind == "config":
            run.config.update(_items(rec.config.update))
        elif kind == "history":
            run.history.append(_items(rec.history.item))
        elif kind == "summary":
            run.summary.update(_items(rec.summary.update))
    return run
