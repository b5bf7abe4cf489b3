"""Pictures of one trajectory: when each position was decided, how sure, what was edited, block progress.

Array builders (numpy, no matplotlib) feed the plotting functions; notebooks call either.
Positions are the generated ones (absolute position minus the prompt length), and only the
returned ones: positions the last block decided past the end of the output (its overflow)
are left out. Rows are the request's own steps in order (step ``i`` is its ``i``-th forward).
Needs trajectory recording on (``runtime.record_trajectory``), which fills the per-position
records. matplotlib is imported inside the plotting functions only.

``plot_decoding`` is the one picture that explains a decoding: per output position the step it
was decided at (coloured by confidence), its token, block boundaries, edits and re-masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

# decision_states values: what a cell of the state heatmap shows.
MASK, DECIDED_NOW, DECIDED, EDITED_NOW = 0, 1, 2, 3
STATE_NAMES = ("mask", "decided this step", "decided earlier", "edited this step")


def _require_records(traj: Any) -> None:
    """A ValueError when the steps counted decisions but recorded no positions (recording off)."""
    if any(s.num_decided for s in traj.steps) and not any(s.decided for s in traj.steps):
        raise ValueError(
            f"Trajectory {traj.index} has no per-position records (its steps count decisions but "
            "list no positions): enable record_trajectory (runtime.record_trajectory=true, or "
            "Diffulex(..., record_trajectory=True)) and generate again"
        )


def _returned(traj: Any, pos: int) -> Optional[int]:
    """The output position of absolute ``pos``, or None when it is prompt or past the output."""
    out = pos - len(traj.prompt_token_ids)
    return out if 0 <= out < traj.num_generated else None


def color_limits(values: Any) -> tuple[float, float]:
    """(vmin, vmax) fit to the finite ``values``; a small range around them when all are equal."""
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    if not v.size:
        return 0.0, 1.0
    lo, hi = float(v.min()), float(v.max())
    if hi - lo < 1e-6:
        lo, hi = max(0.0, lo - 0.05), min(1.0, hi + 0.05)
        if hi - lo < 1e-6:  # a value outside [0, 1]
            lo, hi = lo - 0.05, hi + 0.05
    return lo, hi


def position_table(traj: Any) -> list[dict[str, Any]]:
    """Per returned position: decided step (request-local), confidence, number of edits and remasks."""
    _require_records(traj)
    local = {s.step: i for i, s in enumerate(traj.steps)}
    rows = []
    for pos, h in traj.position_history().items():
        out = _returned(traj, pos)
        if out is None:
            continue
        rows.append({"position": out, "decided_step": local[h["decided_step"]], "token": h["token"],
                     "confidence": h["confidence"], "num_edits": len(h["edits"]),
                     "num_remasks": len(h["remasks"]), "final_token": h["final_token"]})
    return rows


def decision_states(traj: Any) -> np.ndarray:
    """[steps, num_generated] int: MASK / DECIDED_NOW / DECIDED / EDITED_NOW per request step."""
    _require_records(traj)
    states = np.zeros((len(traj.steps), traj.num_generated), dtype=np.int64)  # [S, P]
    current = np.zeros(traj.num_generated, dtype=np.int64)
    for i, s in enumerate(traj.steps):
        current[current != MASK] = DECIDED
        for p, _, _ in s.decided:
            if (o := _returned(traj, p)) is not None:
                current[o] = DECIDED_NOW
        for p, _, _, _ in s.edited:
            if (o := _returned(traj, p)) is not None:
                current[o] = EDITED_NOW
        for p in s.remasked:
            if (o := _returned(traj, p)) is not None:
                current[o] = MASK
        states[i] = current
    return states


def decision_confidence(traj: Any) -> np.ndarray:
    """[steps, num_generated] float: confidence of the token held at each step (NaN while masked)."""
    states = decision_states(traj)
    conf = np.full(states.shape, np.nan)  # [S, P]
    current = np.full(states.shape[1], np.nan)
    for i, s in enumerate(traj.steps):
        for p, _, c in s.decided:
            if (o := _returned(traj, p)) is not None:
                current[o] = c
        for p, _, _, c in s.edited:
            if (o := _returned(traj, p)) is not None:
                current[o] = c
        for p in s.remasked:
            if (o := _returned(traj, p)) is not None:
                current[o] = np.nan
        conf[i] = current
    return conf


def block_progress(traj: Any) -> tuple[np.ndarray, list[int]]:
    """([steps, blocks] masks left per in-flight block, NaN when not in flight; the block indices)."""
    indices = sorted({b["index"] for s in traj.steps for b in s.blocks})
    column = {b: j for j, b in enumerate(indices)}
    masks = np.full((len(traj.steps), len(indices)), np.nan)  # [S, B]
    for i, s in enumerate(traj.steps):
        for b in s.blocks:
            masks[i, column[b["index"]]] = b["masks"]
    return masks, indices


@dataclass(frozen=True)
class DecodingPoints:
    """What ``plot_decoding`` draws, as arrays. Positions are output positions (returned ones
    only), steps are request-local (row ``i`` = the request's ``i``-th step)."""

    positions: np.ndarray  # [N] int: decided returned positions, ascending
    steps: np.ndarray  # [N] int: step of each position's latest mask -> token fill
    confidences: np.ndarray  # [N] float: confidence of that fill
    tokens: np.ndarray  # [N] int: the returned token at each position
    edits: np.ndarray  # [E, 2] int: (position, step) of every token -> token rewrite
    remasks: np.ndarray  # [R, 2] int: (position, step) of every token -> mask
    earlier_fills: np.ndarray  # [F, 2] int: (position, step) of fills a later remask undid
    block_starts: np.ndarray  # [K] int: output positions in [0, num_generated) where a block starts
    block_indices: np.ndarray  # [K] int: the index of the block starting there
    first_block: Optional[int]  # index of the block holding output position 0 (None: unknown)
    num_steps: int  # rows: the request's steps
    overflow: int  # positions decided past the returned output (not in the arrays)


def _pairs(rows: list[tuple[int, int]]) -> np.ndarray:
    return np.asarray(sorted(rows), dtype=np.int64).reshape(-1, 2)


def decoding_points(traj: Any, block_size: Optional[int] = None) -> DecodingPoints:
    """Per returned position: decided step, confidence, token; edit / remask events; block starts.

    Block starts come from the steps' block records (``StepRecord.blocks``, absolute starts);
    ``block_size`` is the fallback when none were recorded (blocks aligned at absolute 0).
    """
    _require_records(traj)
    local = {s.step: i for i, s in enumerate(traj.steps)}
    prompt_len, n = len(traj.prompt_token_ids), traj.num_generated
    positions, steps, confs, tokens = [], [], [], []
    edits, remasks, earlier = [], [], []
    overflow = 0
    for pos, h in traj.position_history().items():
        out = _returned(traj, pos)
        if out is None:
            overflow += pos - prompt_len >= n
            continue
        positions.append(out)
        steps.append(local[h["decided_step"]])
        confs.append(h["confidence"])
        tokens.append(traj.token_ids[out])
        edits += [(out, local[e[0]]) for e in h["edits"]]
        remasks += [(out, local[r]) for r in h["remasks"]]
        earlier += [(out, local[d[0]]) for d in h["decisions"][:-1]]
    starts = {b["start"] - prompt_len: b["index"] for s in traj.steps for b in s.blocks}
    if not starts and block_size:
        starts = {k * block_size - prompt_len: k for k in range(-(-(prompt_len + n) // block_size))}
    first_block = starts[max(s for s in starts if s <= 0)] if any(s <= 0 for s in starts) else None
    starts = {s: b for s, b in starts.items() if 0 <= s < n}
    return DecodingPoints(
        positions=np.asarray(positions, dtype=np.int64), steps=np.asarray(steps, dtype=np.int64),
        confidences=np.asarray(confs, dtype=float), tokens=np.asarray(tokens, dtype=np.int64),
        edits=_pairs(edits), remasks=_pairs(remasks), earlier_fills=_pairs(earlier),
        block_starts=np.asarray(sorted(starts), dtype=np.int64),
        block_indices=np.asarray([starts[s] for s in sorted(starts)], dtype=np.int64), first_block=first_block,
        num_steps=len(traj.steps), overflow=int(overflow))


# Special tokens get a short name in labels (the first match wins: EOS before PAD when they share an id).
_SPECIAL_NAMES = (("eos_token_id", "EOS"), ("pad_token_id", "PAD"), ("bos_token_id", "BOS"),
                  ("mask_token_id", "MASK"))


def token_label(token_id: int, tokenizer: Any = None, width: int = 8) -> str:
    """A token's text for a tick label: specials named (EOS, PAD, ...), whitespace made visible
    (␣ ⏎ ⇥), long texts cut; the id itself without a tokenizer."""
    if tokenizer is None:
        return str(int(token_id))
    for attr, name in _SPECIAL_NAMES:
        if getattr(tokenizer, attr, None) == int(token_id):
            return name
    text = tokenizer.decode([int(token_id)])
    text = text.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥").replace("\r", "\\r")
    if not text:
        return "∅"
    return text if len(text) <= width else text[: width - 1] + "…"


def _axes(ax: Optional[Any], figsize: tuple[float, float]) -> Any:
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def _short(text: str, width: int = 70) -> str:
    r = repr(text)
    return r if len(r) <= width else r[: width - 2] + "…" + r[-1]


def plot_decoding(traj: Any, tokenizer: Any = None, ax: Optional[Any] = None,
                  block_size: Optional[int] = None) -> Any:
    """The picture of one decoding; returns the Axes.

    x: output position (returned positions only), labelled below with the returned token
    (``tokenizer.decode([id])``, whitespace shown as ␣ ⏎ ⇥; the id without a tokenizer) and
    above with its number. y: the request's step, step 0 at the top, so a left-to-right decode
    is a diagonal and a parallel one a row. A filled circle marks the step each position was
    decided at, coloured by its confidence (colour limits fit to the data, colorbar beside);
    triangles mark edits, crosses re-masks, hollow circles fills a re-mask undid, a grey line
    joins a position's events; dashed lines are block starts (``block_size`` is the fallback
    when the steps recorded no blocks). The legend has one entry per kind of event, however
    many events there are.
    """
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    pts = decoding_points(traj, block_size=block_size)
    n, rows = traj.num_generated, max(pts.num_steps, 1)
    ax = _axes(ax, (min(max(7.0, 3.5 + 0.32 * n), 24.0), min(max(3.2, 1.8 + 0.28 * rows), 12.0)))
    size = float(np.clip(2400.0 / max(n, 1), 14.0, 70.0))
    handles = []

    # One grey line per position from its first event to its last: how long it stayed in play.
    events = [np.column_stack([pts.positions, pts.steps]), pts.edits, pts.remasks, pts.earlier_fills]
    everything = np.concatenate([e.reshape(-1, 2) for e in events])
    for p in np.unique(everything[:, 0]):
        ys = everything[everything[:, 0] == p, 1]
        if ys.min() < ys.max():
            ax.plot([p, p], [ys.min(), ys.max()], color="0.75", lw=1.0, zorder=1)

    vmin, vmax = color_limits(pts.confidences)
    points = ax.scatter(pts.positions, pts.steps, c=pts.confidences, cmap="viridis", vmin=vmin, vmax=vmax,
                        s=size, edgecolors="black", linewidths=0.4, zorder=3)
    handles.append(Line2D([], [], ls="", marker="o", ms=7, mfc="tab:green", mec="black", mew=0.4,
                          label="decided (colour: confidence)"))
    if len(pts.earlier_fills):
        ax.scatter(pts.earlier_fills[:, 0], pts.earlier_fills[:, 1], s=size * 0.7, facecolors="none",
                   edgecolors="0.45", linewidths=0.8, zorder=2)
        handles.append(Line2D([], [], ls="", marker="o", ms=6, mfc="none", mec="0.45",
                              label="fill undone by a re-mask"))
    if len(pts.edits):
        ax.scatter(pts.edits[:, 0], pts.edits[:, 1], s=size * 0.8, marker="^", c="tab:red",
                   edgecolors="black", linewidths=0.3, zorder=4)
        handles.append(Line2D([], [], ls="", marker="^", ms=7, mfc="tab:red", mec="black", mew=0.3,
                              label=f"edited ({len(pts.edits)})"))
    if len(pts.remasks):
        ax.scatter(pts.remasks[:, 0], pts.remasks[:, 1], s=size * 0.8, marker="x", c="black",
                   linewidths=1.2, zorder=4)
        handles.append(Line2D([], [], ls="", marker="x", ms=7, mec="black", mew=1.2,
                              label=f"re-masked ({len(pts.remasks)})"))
    labelled = list(zip(pts.block_starts, pts.block_indices))
    if pts.first_block is not None and 0 not in pts.block_starts:  # a block begun in the prompt
        labelled.insert(0, (0, pts.first_block))
    for start, index in labelled:
        if start > 0:
            ax.axvline(start - 0.5, color="0.35", ls="--", lw=1.0, zorder=0)
        ax.annotate(f"block {index}", (start - 0.5, 0.0), xycoords=("data", "axes fraction"),
                    xytext=(2, 2), textcoords="offset points", fontsize=7, color="0.35")
    if len(pts.block_starts):
        handles.append(Line2D([], [], color="0.35", ls="--", lw=1.0, label="block start"))

    ax.set_xlim(-0.6, max(n, 1) - 0.4)
    ax.set_ylim(rows - 0.5, -0.5)  # step 0 at the top
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    every = max(1, -(-n // 150))  # at most ~150 token labels
    ticks = np.arange(0, n, every)
    labels = [token_label(traj.token_ids[i], tokenizer) for i in ticks]
    ax.set_xticks(ticks)
    ax.set_xticklabels(labels, fontsize=9, family="monospace",
                       rotation=90 if n > 40 or max(map(len, labels), default=0) > 3 else 0)
    top = ax.secondary_xaxis("top")
    if n <= 40:
        top.set_xticks(np.arange(n))
    else:
        top.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    top.tick_params(labelsize=7)
    hidden = f"; {pts.overflow} decided positions past the output not shown" if pts.overflow else ""
    ax.set_xlabel(f"returned token at each output position{hidden}", fontsize=9)
    ax.set_ylabel("request step (decided at)", fontsize=9)
    ax.grid(axis="y", color="0.92", lw=0.6, zorder=0)

    nfe = traj.nfe or len(traj.steps)
    tpf = n / nfe if nfe else 0.0
    head = (f"request {traj.index}: {nfe} steps (NFE), {n} tokens, TPF {tpf:.2f}, "
            f"finish: {traj.finish_reason}")
    prompt = f"{_short(tokenizer.decode(list(traj.prompt_token_ids)), 50)} → " if tokenizer is not None else ""
    ax.set_title(f"{head}\n{prompt}{_short(traj.text)}", fontsize=9)

    # Colorbar in the lower half right of the axes, legend above it: neither covers the data.
    cax = ax.inset_axes([1.015, 0.0, 0.022, 0.48])
    ax.figure.colorbar(points, cax=cax, label="confidence")
    cax.tick_params(labelsize=7)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
              fontsize=7.5, frameon=False, handletextpad=0.4)
    return ax


def plot_confidence_heatmap(traj: Any, ax: Optional[Any] = None) -> Any:
    """Heatmap step × position of the held token's confidence; edits circled, fresh decisions dotted."""
    ax = _axes(ax, (8, 4))
    conf, states = decision_confidence(traj), decision_states(traj)
    vmin, vmax = color_limits(conf)
    image = ax.imshow(conf, aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
    ys, xs = np.nonzero(states == DECIDED_NOW)
    ax.scatter(xs, ys, s=6, c="white", marker=".", label="decided")
    ys, xs = np.nonzero(states == EDITED_NOW)
    ax.scatter(xs, ys, s=40, facecolors="none", edgecolors="red", label="edited")
    ax.set_xlabel("generated position")
    ax.set_ylabel("request step")
    ax.set_title(f"request {traj.index}: confidence of held tokens (white: masked)")
    ax.figure.colorbar(image, ax=ax, label="confidence")
    ax.legend(loc="upper right", fontsize=7)
    return ax


def plot_decision_timeline(traj: Any, ax: Optional[Any] = None) -> Any:
    """Scatter: the step each position was decided at, coloured by confidence; edited positions ringed."""
    ax = _axes(ax, (8, 3))
    rows = position_table(traj)
    xs = [r["position"] for r in rows]
    confs = [r["confidence"] for r in rows]
    vmin, vmax = color_limits(confs)
    points = ax.scatter(xs, [r["decided_step"] for r in rows], c=confs, cmap="viridis", vmin=vmin, vmax=vmax)
    edited = [r for r in rows if r["num_edits"]]
    ax.scatter([r["position"] for r in edited], [r["decided_step"] for r in edited], s=120,
               facecolors="none", edgecolors="red", label="edited later")
    ax.set_xlabel("generated position")
    ax.set_ylabel("decided at request step")
    ax.figure.colorbar(points, ax=ax, label="confidence")
    if edited:
        ax.legend(fontsize=7)
    return ax


def plot_block_progress(traj: Any, ax: Optional[Any] = None) -> Any:
    """Lines: masks left in each in-flight block over the request's steps."""
    ax = _axes(ax, (8, 3))
    masks, indices = block_progress(traj)
    for j, b in enumerate(indices):
        ax.plot(np.arange(len(masks)), masks[:, j], marker="o", ms=3, label=f"block {b}")
    ax.set_xlabel("request step")
    ax.set_ylabel("masks left")
    ax.set_title(f"request {traj.index}: block progress")
    ax.legend(fontsize=7, ncol=max(1, len(indices) // 6))
    return ax
