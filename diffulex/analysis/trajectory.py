"""Pictures of one trajectory: when each position was decided, how sure, what was edited, block progress.

Array builders (numpy, no matplotlib) feed the plotting functions; notebooks call either.
Positions are the generated ones (absolute position minus the prompt length); rows are
the request's own steps in order (step ``i`` is its ``i``-th forward). Needs trajectory
recording on (``runtime.record_trajectory``), which fills the per-position records.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

# decision_states values: what a cell of the state heatmap shows.
MASK, DECIDED_NOW, DECIDED, EDITED_NOW = 0, 1, 2, 3
STATE_NAMES = ("mask", "decided this step", "decided earlier", "edited this step")


def position_table(traj: Any) -> list[dict[str, Any]]:
    """Per generated position: decided step (request-local), confidence, number of edits and remasks."""
    local = {s.step: i for i, s in enumerate(traj.steps)}
    start = len(traj.prompt_token_ids)
    rows = []
    for pos, h in traj.position_history().items():
        if pos < start:
            continue
        rows.append({"position": pos - start, "decided_step": local[h["decided_step"]], "token": h["token"],
                     "confidence": h["confidence"], "num_edits": len(h["edits"]),
                     "num_remasks": len(h["remasks"]), "final_token": h["final_token"]})
    return rows


def decision_states(traj: Any) -> np.ndarray:
    """[steps, positions] int: MASK / DECIDED_NOW / DECIDED / EDITED_NOW per request step."""
    start = len(traj.prompt_token_ids)
    width = max([traj.num_generated] + [p - start + 1 for s in traj.steps for p, _, _ in s.decided])
    states = np.zeros((len(traj.steps), width), dtype=np.int64)  # [S, P]
    current = np.zeros(width, dtype=np.int64)
    for i, s in enumerate(traj.steps):
        current[current != MASK] = DECIDED
        for p, _, _ in s.decided:
            current[p - start] = DECIDED_NOW
        for p, _, _, _ in s.edited:
            current[p - start] = EDITED_NOW
        for p in s.remasked:
            current[p - start] = MASK
        states[i] = current
    return states


def decision_confidence(traj: Any) -> np.ndarray:
    """[steps, positions] float: confidence of the token held at each step (NaN while masked)."""
    start = len(traj.prompt_token_ids)
    states = decision_states(traj)
    conf = np.full(states.shape, np.nan)  # [S, P]
    current = np.full(states.shape[1], np.nan)
    for i, s in enumerate(traj.steps):
        for p, _, c in s.decided:
            current[p - start] = c
        for p, _, _, c in s.edited:
            current[p - start] = c
        for p in s.remasked:
            current[p - start] = np.nan
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


def _axes(ax: Optional[Any], figsize: tuple[float, float]) -> Any:
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def plot_confidence_heatmap(traj: Any, ax: Optional[Any] = None) -> Any:
    """Heatmap step × position of the held token's confidence; edits circled, fresh decisions dotted."""
    ax = _axes(ax, (8, 4))
    conf, states = decision_confidence(traj), decision_states(traj)
    image = ax.imshow(conf, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
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
    points = ax.scatter(xs, [r["decided_step"] for r in rows], c=[r["confidence"] for r in rows],
                        cmap="viridis", vmin=0.0, vmax=1.0)
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
