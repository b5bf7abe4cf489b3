"""GenerationOutputs / Trajectory / StepRecord: JSONL round trip, history rebuild, metrics."""

from __future__ import annotations

import json

import pytest

from diffulex.engine.outputs import GenerationOutputs, StepRecord, Trajectory


def _block(index: int, start: int, masks: int, state: str = "active") -> dict:
    return {"index": index, "start": start, "masks": masks, "state": state}


def _edited_trajectory() -> Trajectory:
    """Position 10: decided (s0), edited twice (s1, s2), remasked (s3), decided again (s4)."""
    steps = [
        StepRecord(0, 0.125, 1, 1, 0, 0, 3, [_block(2, 8, 3)], decided=[(10, 5, 0.95)]),
        StepRecord(1, 0.25, 2, 1, 1, 0, 2, [_block(2, 8, 2)],
                   decided=[(11, 9, 0.5)], edited=[(10, 5, 6, 0.8)]),
        StepRecord(2, 0.25, 3, 0, 1, 0, 2, [_block(2, 8, 2)], edited=[(10, 6, 7, 0.85)]),
        StepRecord(3, 0.25, 4, 0, 0, 1, 3, [_block(2, 8, 3)], remasked=[10]),
        StepRecord(4, 0.25, 5, 3, 0, 0, 0, [_block(2, 8, 0, "committing")],
                   decided=[(10, 8, 0.99), (12, 1, 0.9), (9, 4, 0.7)]),
    ]
    return Trajectory(index=0, prompt_token_ids=[1, 2, 3, 4, 5, 6, 7, 8, 3], token_ids=[4, 8, 9, 1],
                      text="abcd", finish_reason="eos", nfe=5, steps=steps,
                      arrival_s=1.0, first_token_s=1.5, finish_s=3.25)


def test_position_history_rebuilds_decisions_edits_and_redecision():
    h = _edited_trajectory().position_history()
    assert list(h) == [9, 10, 11, 12]  # sorted absolute positions
    p = h[10]
    # The latest fill wins; the earlier fill, both edits and the remask are kept.
    assert (p["decided_step"], p["token"], p["confidence"]) == (4, 8, 0.99)
    assert p["edits"] == [(1, 5, 6, 0.8), (2, 6, 7, 0.85)]
    assert p["remasks"] == [3]
    assert p["decisions"] == [(0, 5, 0.95), (4, 8, 0.99)]
    assert p["final_token"] == 8
    assert h[11] == {"decided_step": 1, "token": 9, "confidence": 0.5, "edits": [],
                     "remasks": [], "decisions": [(1, 9, 0.5)], "final_token": 9}


def test_position_history_final_token_none_after_trailing_remask_and_rejects_unknown():
    t = _edited_trajectory()
    t.steps = t.steps[:4]
    assert t.position_history()[10]["final_token"] is None
    t.steps.append(StepRecord(9, 0.1, 6, 0, 1, 0, 0, edited=[(99, 1, 2, 0.5)]))
    with pytest.raises(ValueError, match="position 99"):
        t.position_history()


def test_jsonl_round_trip_is_exact(tmp_path):
    t0 = _edited_trajectory()
    t1 = Trajectory(index=1, prompt_token_ids=[7], token_ids=[], text="", finish_reason="aborted",
                    nfe=0, steps=[], arrival_s=0.1, first_token_s=None, finish_s=0.2)
    out = GenerationOutputs([t0, t1], wall_time_s=3.5, prefill_time_s=0.1 + 0.2,
                            decode_time_s=2.0 / 3.0, num_steps=5)
    path = tmp_path / "sub" / "traj.jsonl"
    out.save_jsonl(path)
    header = json.loads(path.read_text().splitlines()[0])
    assert header["kind"] == "diffulex.generation" and header["version"] == 1
    assert len(path.read_text().splitlines()) == 3  # header + one line per trajectory
    back = GenerationOutputs.load_jsonl(path)
    assert back == out
    assert isinstance(back[0].steps[1].edited[0], tuple)  # tuples restored, not lists
    assert back[0].position_history() == t0.position_history()
    assert len(back) == 2 and back[1].first_token_s is None


def test_metrics_on_hand_built_numbers():
    def steps(decided):
        return [StepRecord(i, 0.5, i + 1, d, 0, 0, 0) for i, d in enumerate(decided)]

    a = Trajectory(0, [1, 2, 3, 4], [5] * 6, "", "length", nfe=3, steps=steps([2, 1, 3]),
                   arrival_s=0.0, first_token_s=0.5, finish_s=2.0)
    b = Trajectory(1, [1, 2], [5, 6], "", "stop", nfe=2, steps=steps([1, 1]),
                   arrival_s=0.25, first_token_s=1.0, finish_s=1.5)
    c = Trajectory(2, [], [], "", "aborted", nfe=0, arrival_s=0.0, first_token_s=None, finish_s=0.0)
    assert (a.num_generated, a.tpf, a.ttft_s, a.e2e_s) == (6, 2.0, 0.5, 2.0)
    assert (c.tpf, c.ttft_s) == (0.0, None)

    out = GenerationOutputs([a, b, c], wall_time_s=4.0, prefill_time_s=0.5, decode_time_s=2.0,
                            num_steps=3)
    assert out.nfe == 5
    assert out.mean_nfe == 5 / 3
    assert out.tpf == 8 / 5  # total returned / total nfe, not a mean of per-request ratios
    assert out.ttft_s == 0.625  # mean over requests that decided a token: (0.5 + 0.75) / 2
    assert out.throughput == 2.0  # 8 generated / 4 s
    assert out.decode_throughput == 8 / 2.5  # tokens over all step time: the prefilling steps decode too
    assert out.prefill_throughput == 12.0  # 6 prompt tokens / 0.5 s
    s = out.summary()
    assert s["tpf"] == 8 / 5 and s["nfe"] == 5.0 and s["num_generated_tokens"] == 8.0
    assert all(isinstance(v, float) for v in s.values())

    instant = GenerationOutputs([a], wall_time_s=0.0, prefill_time_s=0.0, decode_time_s=0.0)
    rates = (instant.throughput, instant.prefill_throughput, instant.decode_throughput)
    assert rates == (0.0, 0.0, 0.0)
    assert GenerationOutputs([]).summary()["ttft_s"] == 0.0


@pytest.mark.parametrize("content", [
    "",
    "not json at all\n",
    '{"index": 0, "token_ids": []}\n',
    '{"kind": "diffulex.generation", "version": 99}\n',
    '{"kind": "diffulex.generation", "version": 1, "num_trajectories": 2, "wall_time_s": 1.0, '
    '"prefill_time_s": 0.0, "decode_time_s": 1.0, "num_steps": 1}\n',  # truncated
    '{"kind": "diffulex.generation", "version": 1, "num_trajectories": 1, "wall_time_s": 1.0, '
    '"prefill_time_s": 0.0, "decode_time_s": 1.0, "num_steps": 1}\n{"index": 0}\n',
])
def test_load_rejects_files_that_are_not_trajectory_files(tmp_path, content):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match="bad.jsonl"):
        GenerationOutputs.load_jsonl(path)


def test_invalid_finish_reason_and_block_state_are_errors():
    with pytest.raises(ValueError, match="finish_reason"):
        Trajectory(0, [], [], "", "done", nfe=0)
    with pytest.raises(ValueError, match="state"):
        StepRecord(0, 0.1, 1, 0, 0, 0, 0, blocks=[_block(0, 0, 1, "finished")])
