"""What ``generate`` returns: per-step records, per-request trajectories, batch outputs.

A ``StepRecord`` is one forward pass a request took part in; a ``Trajectory`` is one
request from arrival to finish; ``GenerationOutputs`` is a whole ``generate`` call, in
prompt order. All three are plain data (no torch) so they save to JSONL and load back
in a notebook without the engine. Aggregate metrics live in ``diffulex.engine.metrics``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from diffulex.engine import metrics

FINISH_REASONS = ("eos", "stop", "length", "max_nfe", "repetition", "aborted")
BLOCK_STATES = ("active", "committing")
FILE_KIND = "diffulex.generation"
FILE_VERSION = 1
_HEADER_FIELDS = ("num_trajectories", "wall_time_s", "prefill_time_s", "decode_time_s", "num_steps")


@dataclass
class StepRecord:
    """One engine step, seen from one request.

    Positions are absolute (prompt tokens included). ``decided``/``edited``/``remasked``
    are empty when trajectory recording is off; the ``num_*`` counts are always filled.
    Within one step the engine applies fills, then edits, then remasks.
    """

    step: int  # engine step index
    time_s: float  # wall time of the whole batch step
    nfe: int  # the request's forward count after this step
    num_decided: int  # mask -> token fills
    num_edited: int  # token -> token rewrites
    num_remasked: int  # token -> mask
    masks_left: int  # masks left in the request's in-flight blocks after the step
    blocks: list[dict] = field(default_factory=list)  # {"index", "start", "masks", "state"}
    decided: list[tuple[int, int, float]] = field(default_factory=list)  # (pos, token, conf)
    edited: list[tuple[int, int, int, float]] = field(default_factory=list)  # (pos, old, new, conf)
    remasked: list[int] = field(default_factory=list)  # positions

    def __post_init__(self) -> None:
        for b in self.blocks:
            if b.get("state") not in BLOCK_STATES:
                raise ValueError(
                    f"StepRecord.blocks state={b.get('state')!r} at step {self.step} is invalid: "
                    f"allowed {BLOCK_STATES}"
                )
        # JSON brings tuples back as lists and numpy scalars do not serialize: normalize here
        # so a loaded record equals the one that was saved.
        self.decided = [(int(p), int(t), float(c)) for p, t, c in self.decided]
        self.edited = [(int(p), int(o), int(n), float(c)) for p, o, n, c in self.edited]
        self.remasked = [int(p) for p in self.remasked]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StepRecord":
        return cls(**d)


@dataclass
class Trajectory:
    """One request: its tokens, why it stopped, and every step it took part in.

    Times are wall-clock seconds (``time.perf_counter`` of the engine); ``first_token_s``
    is the end of the first step that decided a token, ``None`` if none did.
    """

    index: int  # prompt index in the generate call
    prompt_token_ids: list[int]
    token_ids: list[int]  # generated tokens, as returned
    text: str
    finish_reason: str  # one of FINISH_REASONS
    nfe: int
    steps: list[StepRecord] = field(default_factory=list)
    arrival_s: float = 0.0
    first_token_s: Optional[float] = None
    finish_s: float = 0.0

    def __post_init__(self) -> None:
        reason = str(getattr(self.finish_reason, "value", self.finish_reason))
        if reason not in FINISH_REASONS:
            raise ValueError(
                f"Trajectory.finish_reason={self.finish_reason!r} is invalid: "
                f"allowed {FINISH_REASONS}"
            )
        self.finish_reason = reason
        self.steps = [
            s if isinstance(s, StepRecord) else StepRecord.from_dict(s) for s in self.steps
        ]

    @property
    def num_generated(self) -> int:
        return len(self.token_ids)

    @property
    def num_decided(self) -> int:
        return sum(s.num_decided for s in self.steps)

    @property
    def tpf(self) -> float:
        """Tokens per forward of this request (``metrics.tpf``: returned tokens / NFE)."""
        return metrics.tpf([self])

    @property
    def ttft_s(self) -> Optional[float]:
        return None if self.first_token_s is None else self.first_token_s - self.arrival_s

    @property
    def e2e_s(self) -> float:
        return self.finish_s - self.arrival_s

    def position_history(self) -> dict[int, dict[str, Any]]:
        """Rebuild, per absolute position ever decided, when and how it got its token.

        Each entry is ``{"decided_step", "token", "confidence", "edits", "remasks",
        "decisions", "final_token"}``:

        - ``decided_step``/``token``/``confidence``: the *latest* mask -> token fill.
        - ``edits``: every token -> token rewrite ``(step, old, new, conf)``, in order.
        - ``remasks``: every step that put the position back to mask.
        - ``decisions``: every fill ``(step, token, conf)``, in order. A position that is
          remasked and decided again keeps its earlier fills, edits and remasks here; the
          new fill becomes ``decided_step``/``token``/``confidence``.
        - ``final_token``: the token after the last record (the latest fill or edit), or
          ``None`` when the last thing that happened was a remask.

        Needs trajectory recording on; an edit or remask of a position never decided is an
        error, since the records would then be inconsistent.
        """
        history: dict[int, dict[str, Any]] = {}
        for s in self.steps:
            for pos, tok, conf in s.decided:
                h = history.setdefault(pos, {"edits": [], "remasks": [], "decisions": []})
                h.update(decided_step=s.step, token=tok, confidence=conf, final_token=tok)
                h["decisions"].append((s.step, tok, conf))
            for pos, old, new, conf in s.edited:
                h = self._known(history, pos, s.step, "edited")
                h["edits"].append((s.step, old, new, conf))
                h["final_token"] = new
            for pos in s.remasked:
                h = self._known(history, pos, s.step, "remasked")
                h["remasks"].append(s.step)
                h["final_token"] = None
        return dict(sorted(history.items()))

    def _known(self, history: dict, pos: int, step: int, what: str) -> dict[str, Any]:
        if pos not in history:
            raise ValueError(
                f"Trajectory {self.index}: position {pos} {what} at step {step} was never decided; "
                "record trajectories from the request's first step"
            )
        return history[pos]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["steps"] = [s.to_dict() for s in self.steps]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Trajectory":
        return cls(**d)


@dataclass
class GenerationOutputs:
    """A whole ``generate`` call: trajectories in prompt order plus batch timing."""

    trajectories: list[Trajectory]
    wall_time_s: float = 0.0
    prefill_time_s: float = 0.0
    decode_time_s: float = 0.0
    num_steps: int = 0  # engine steps

    def __len__(self) -> int:
        return len(self.trajectories)

    def __getitem__(self, i: int) -> Trajectory:
        return self.trajectories[i]

    def __iter__(self):
        return iter(self.trajectories)

    @property
    def nfe(self) -> int:
        return metrics.total_nfe(self.trajectories)

    @property
    def mean_nfe(self) -> float:
        return metrics.mean_nfe(self.trajectories)

    @property
    def tpf(self) -> float:
        return metrics.tpf(self.trajectories)

    @property
    def ttft_s(self) -> float:
        return metrics.mean_ttft_s(self.trajectories)

    @property
    def throughput(self) -> float:
        return metrics.rate(metrics.num_generated(self.trajectories), self.wall_time_s)

    @property
    def decode_throughput(self) -> float:
        return metrics.decode_throughput(self.trajectories, self.prefill_time_s, self.decode_time_s)

    @property
    def prefill_throughput(self) -> float:
        return metrics.rate(metrics.num_prompt(self.trajectories), self.prefill_time_s)

    def summary(self) -> dict[str, float]:
        return metrics.summary(self)

    def save_jsonl(self, path: Union[str, os.PathLike]) -> None:
        """Write a header line (kind, version, batch timing) then one line per trajectory."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = {"kind": FILE_KIND, "version": FILE_VERSION, "num_trajectories": len(self),
                  "wall_time_s": self.wall_time_s, "prefill_time_s": self.prefill_time_s,
                  "decode_time_s": self.decode_time_s, "num_steps": self.num_steps}
        with path.open("w", encoding="utf-8") as f:
            f.write(json.dumps(header) + "\n")
            for t in self.trajectories:
                f.write(json.dumps(t.to_dict()) + "\n")

    @classmethod
    def load_jsonl(cls, path: Union[str, os.PathLike]) -> "GenerationOutputs":
        """Read a file written by ``save_jsonl``; anything else is a ``ValueError``."""
        path = Path(path)
        with path.open("r", encoding="utf-8") as f:
            lines = [line for line in f.read().splitlines() if line.strip()]
        if not lines:
            raise ValueError(f"{path} is empty, not a Diffulex trajectory file")
        header = _parse_line(path, 1, lines[0])
        if not isinstance(header, dict) or header.get("kind") != FILE_KIND:
            raise ValueError(
                f"{path} is not a Diffulex trajectory file: its first line must be a header "
                f'with "kind": "{FILE_KIND}" (write it with GenerationOutputs.save_jsonl)'
            )
        if header.get("version") != FILE_VERSION:
            raise ValueError(
                f"{path}: trajectory file version {header.get('version')!r} is not supported "
                f"(this Diffulex reads version {FILE_VERSION})"
            )
        missing = [k for k in _HEADER_FIELDS if k not in header]
        if missing:
            raise ValueError(f"{path}: trajectory file header lacks {missing}")
        trajectories = []
        for lineno, line in enumerate(lines[1:], start=2):
            try:
                trajectories.append(Trajectory.from_dict(_parse_line(path, lineno, line)))
            except (TypeError, KeyError, ValueError) as e:
                raise ValueError(f"{path}:{lineno}: not a valid trajectory: {e}") from e
        if len(trajectories) != header.get("num_trajectories"):
            raise ValueError(
                f"{path}: header says {header.get('num_trajectories')} trajectories, file holds "
                f"{len(trajectories)} (truncated or edited file?)"
            )
        return cls(trajectories, wall_time_s=header["wall_time_s"],
                   prefill_time_s=header["prefill_time_s"],
                   decode_time_s=header["decode_time_s"], num_steps=header["num_steps"])


def _parse_line(path: Path, lineno: int, line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path}:{lineno} is not JSON, so {path} is not a Diffulex trajectory file"
        ) from e
