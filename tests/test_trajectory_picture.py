"""plot_decoding and decoding_points: the picture of one decoding, checked on its numbers.

Hand-built trajectories pin the exact data (returned positions only, request-local steps, edit and
re-mask events, block starts, colour limits, one legend entry per kind); one end-to-end run on the
shipped trained tiny LLaDA2 pins what the picture shows of a real decode: at accept_threshold 0.95
the blocks are decided one after the other, about one token per step; at 0.5 each block in one step.
"""

from __future__ import annotations

import numpy as np
import pytest

from diffulex.analysis import trajectory as T
from diffulex.engine.outputs import StepRecord, Trajectory

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def step(k: int, decided=(), edited=(), remasked=(), blocks=()) -> StepRecord:
    return StepRecord(step=k, time_s=0.0, nfe=k + 1, num_decided=len(decided), num_edited=len(edited),
                      num_remasked=len(remasked), masks_left=0, blocks=list(blocks), decided=list(decided),
                      edited=list(edited), remasked=list(remasked))


def block(index: int, start: int, masks: int = 0) -> dict:
    return {"index": index, "start": start, "masks": masks, "state": "active" if masks else "committing"}


def traj(steps, prompt_len: int, token_ids, finish_reason: str = "eos") -> Trajectory:
    return Trajectory(index=7, prompt_token_ids=list(range(prompt_len)), token_ids=list(token_ids), text="out",
                      finish_reason=finish_reason, nfe=len(steps), steps=steps)


def overflowing() -> Trajectory:
    """Prompt of 3, blocks of 4 (absolute 0..3, 4..7); 3 tokens returned, 2 more decided past them.

    Engine steps 10 and 12 are the request's steps 0 and 1.
    """
    return traj([step(10, decided=[(3, 50, 0.9)], blocks=[block(0, 0), block(1, 4, 4)]),
                 step(12, decided=[(4, 51, 0.5), (5, 52, 0.6), (6, 53, 0.4), (7, 54, 0.3)],
                      blocks=[block(1, 4)])],
                prompt_len=3, token_ids=[50, 51, 52])


def test_only_returned_positions_appear():
    t = overflowing()
    p = T.decoding_points(t)
    assert p.positions.tolist() == [0, 1, 2] and p.steps.tolist() == [0, 1, 1]
    assert p.confidences.tolist() == [0.9, 0.5, 0.6] and p.tokens.tolist() == [50, 51, 52]
    assert p.overflow == 2 and p.num_steps == 2
    assert T.decision_states(t).shape == (2, 3) and T.decision_confidence(t).shape == (2, 3)
    assert T.decision_states(t).tolist() == [[T.DECIDED_NOW, T.MASK, T.MASK],
                                            [T.DECIDED, T.DECIDED_NOW, T.DECIDED_NOW]]
    assert [r["position"] for r in T.position_table(t)] == [0, 1, 2]
    ax = T.plot_decoding(t)
    (points,) = [c for c in ax.collections if c.get_array() is not None]
    assert points.get_offsets().tolist() == [[0, 0], [1, 1], [2, 1]]
    assert ax.get_xlim()[1] < 3  # no room for the overflow
    assert "2 decided positions past the output not shown" in ax.get_xlabel()


def test_block_starts_in_output_positions_and_block_size_fallback():
    t = overflowing()
    p = T.decoding_points(t)
    assert p.block_starts.tolist() == [1] and p.block_indices.tolist() == [1] and p.first_block == 0
    assert T.decoding_points(t, block_size=2).block_starts.tolist() == [1]  # recorded blocks win
    for s in t.steps:
        s.blocks = []
    assert T.decoding_points(t).block_starts.tolist() == []
    fallback = T.decoding_points(t, block_size=2)  # absolute 0, 2, 4, 6: output -3, -1, 1, 3
    assert fallback.block_starts.tolist() == [1] and fallback.block_indices.tolist() == [2]
    assert fallback.first_block == 1
    aligned = traj([step(0, decided=[(4, 1, 0.5), (5, 1, 0.5), (8, 1, 0.5)])], prompt_len=4, token_ids=[1] * 5)
    assert T.decoding_points(aligned, block_size=4).block_starts.tolist() == [0, 4]
    ax = T.plot_decoding(aligned, block_size=4)
    assert [line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == "--"] == [3.5]


def edited_and_remasked() -> Trajectory:
    """Prompt of 2: position 0 edited at step 1; position 1 re-masked at 1, decided again at 2;
    position 2 decided at 2 and edited at 3."""
    return traj([step(0, decided=[(2, 10, 0.3), (3, 11, 0.6)], blocks=[block(0, 0, 2)]),
                 step(1, edited=[(2, 10, 12, 0.95)], remasked=[3], blocks=[block(0, 0, 1)]),
                 step(2, decided=[(3, 13, 0.5), (4, 14, 0.45)], blocks=[block(0, 0)]),
                 step(3, edited=[(4, 14, 15, 0.7)], blocks=[block(0, 0)])],
                prompt_len=2, token_ids=[12, 13, 15])


def test_edit_and_remask_events_land_at_their_position_and_step():
    t = edited_and_remasked()
    p = T.decoding_points(t)
    assert p.positions.tolist() == [0, 1, 2] and p.steps.tolist() == [0, 2, 2]
    assert p.confidences.tolist() == [0.3, 0.5, 0.45] and p.tokens.tolist() == [12, 13, 15]
    assert p.edits.tolist() == [[0, 1], [2, 3]]
    assert p.remasks.tolist() == [[1, 1]]
    assert p.earlier_fills.tolist() == [[1, 0]]
    ax = T.plot_decoding(t)
    offsets = sorted(c.get_offsets().tolist() for c in ax.collections)
    assert [[0, 1], [2, 3]] in offsets and [[1, 1]] in offsets and [[1, 0]] in offsets
    labels = [x.get_text() for x in ax.get_legend().get_texts()]
    assert labels == ["decided (colour: confidence)", "fill undone by a re-mask", "edited (2)",
                      "re-masked (1)"]


def test_colour_limits_fit_the_data_and_the_colorbar_is_labelled():
    t = edited_and_remasked()  # decided confidences 0.3, 0.5, 0.45 (edits not counted)
    t.steps[2].decided[0] = (3, 13, 0.6)
    ax = T.plot_decoding(t)
    (points,) = [c for c in ax.collections if c.get_array() is not None]
    assert (points.norm.vmin, points.norm.vmax) == pytest.approx((0.3, 0.6))
    assert any(a.get_ylabel() == "confidence" for a in ax.child_axes)
    same = traj([step(0, decided=[(1, 5, 1.0), (2, 6, 1.0)])], prompt_len=1, token_ids=[5, 6])
    (points,) = [c for c in T.plot_decoding(same).collections if c.get_array() is not None]
    assert points.norm.vmin < 1.0 <= points.norm.vmax
    assert T.color_limits([0.4, 0.4]) == pytest.approx((0.35, 0.45))


def test_legend_has_one_entry_per_kind_with_many_events():
    steps = [step(0, decided=[(1 + p, 3, 0.5 + 0.04 * p) for p in range(10)], blocks=[block(0, 0)])]
    steps += [step(k, edited=[(1 + p, 3, 4, 0.9) for p in range(10)]) for k in range(1, 6)]  # 50 edits
    steps += [step(6, remasked=[1]), step(7, decided=[(1, 3, 0.7)])]
    t = traj(steps, prompt_len=1, token_ids=[3] * 10)
    assert len(T.decoding_points(t).edits) == 50
    labels = [x.get_text() for x in T.plot_decoding(t).get_legend().get_texts()]
    assert labels == ["decided (colour: confidence)", "fill undone by a re-mask", "edited (50)",
                      "re-masked (1)"]


class WordTokenizer:
    eos_token_id = 0
    words = {0: "<|endoftext|>", 1: " a", 2: "\n", 3: "supercalifragilistic"}

    def decode(self, ids):
        return "".join(self.words[i] for i in ids)


def test_token_text_labels_and_title():
    t = traj([step(0, decided=[(2, 1, 0.8), (3, 2, 0.9), (4, 3, 0.7), (5, 0, 1.0)])], prompt_len=2,
             token_ids=[1, 2, 3, 0])
    ax = T.plot_decoding(t, WordTokenizer())
    assert [x.get_text() for x in ax.get_xticklabels()] == ["␣a", "⏎", "superca…", "EOS"]
    assert [x.get_text() for x in T.plot_decoding(t).get_xticklabels()] == ["1", "2", "3", "0"]
    title = ax.get_title()
    assert "request 7" in title and "1 steps (NFE)" in title and "TPF 4.00" in title and "eos" in title


def test_without_per_position_records_the_error_names_record_trajectory():
    t = traj([StepRecord(step=0, time_s=0.0, nfe=1, num_decided=2, num_edited=0, num_remasked=0,
                         masks_left=0)], prompt_len=2, token_ids=[1, 2])
    for f in (T.decoding_points, T.plot_decoding, T.position_table, T.decision_states):
        with pytest.raises(ValueError, match="record_trajectory"):
            f(t)


PROMPT = "Mark 3 of 7 3 9 1 5 8 2 6."  # 8 mask digits + a space + EOS: two blocks of 8 in the output


@pytest.fixture(scope="module")
def real_runs():
    from diffulex import Diffulex, SamplingParams
    from diffulex.tiny import ensure_tiny_checkpoint

    path = str(ensure_tiny_checkpoint("llada2", trained=True))
    runs = {}
    for threshold in (0.95, 0.5):
        llm = Diffulex(path, decoding_strategy="multi_bd", block_size=8, accept_threshold=threshold,
                       record_trajectory=True)
        try:
            out = llm.generate([PROMPT], SamplingParams(temperature=0.0, max_tokens=32), use_tqdm=False)
            runs[threshold] = (out[0], llm.tokenizer)
        finally:
            llm.exit()
    return runs


def block_steps(t: Trajectory) -> list[np.ndarray]:
    p = T.decoding_points(t)
    which = np.searchsorted(p.block_starts, p.positions, side="right")
    return [p.steps[which == b] for b in np.unique(which)]


def test_real_decode_picture(real_runs, tmp_path):
    high, tok = real_runs[0.95]
    n = high.num_generated
    ax = T.plot_decoding(high, tok)
    assert isinstance(ax, matplotlib.axes.Axes)
    ax.figure.savefig(tmp_path / "decoding.png", dpi=80)
    assert (tmp_path / "decoding.png").stat().st_size > 10_000
    p = T.decoding_points(high)
    assert p.positions.tolist() == list(range(n)) and p.overflow > 0  # the last block overflows
    assert T.decision_states(high).shape == (len(high.steps), n)
    assert len(p.block_starts) >= 1  # the output spans two blocks
    # 0.95: the blocks one after the other, about one token per step (within a block in the model's
    # order of confidence, which is not left to right on this task).
    blocks = block_steps(high)
    assert len(blocks) >= 2 and all(a.max() < b.min() for a, b in zip(blocks, blocks[1:]))
    assert high.nfe >= 0.8 * n
    # 0.5: each block decided in one step, all its positions in parallel.
    low, _ = real_runs[0.5]
    assert all(len(set(s.tolist())) == 1 for s in block_steps(low))
    assert low.nfe < high.nfe / 2
