"""experiments/evaluate.py and diffulex.tasks: tasks, scoring, files, sweeps with the trade-off.

Pins: on the trained llada2, ``evaluate.py task=add2 strategy=multi_bd`` reports the accuracy of
docs/models.md on the same 200 held-out samples and writes results.json + samples.jsonl whose
numbers follow the metric definitions; an evaluation sweep summarizes into accuracy vs TPF with
the AUP per strategy and what ran; GSM8K / HumanEval / MBPP read local files and score as their
harnesses do; bad input (unknown task, malformed file, missing file) is a clear error.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from experiments_helpers import run_script

from diffulex.engine.outputs import Trajectory
from diffulex.tasks import GSM8K, MBPP, ArithmeticTask, HumanEval, JsonlTask, evaluate, held_out, run_program

THRESHOLD = ["strategy.accept_threshold=0.95", "experiment.progress=false"]


def test_add2_accuracy_equals_the_trained_models_report(tiny_root, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_script("evaluate.py", ["task=add2", "strategy=multi_bd", *THRESHOLD, f"hydra.run.dir={run_dir}"],
                      tmp_path, tiny_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    # docs/models.md: llada2 multi_bd (block 32, threshold 0.95) add2 accuracy 1.000 on 200 held-out problems.
    assert results["status"] == "ok" and results["metric"] == "accuracy"
    assert results["metrics"]["accuracy"] == results["value"] == 1.0 and results["num_samples"] == 200
    assert [s["prompt"] for s in samples] == [p.prompt for p in held_out("add2", 200, seed=1)]
    assert all(s["correct"] and s["extracted"] == s["reference"] for s in samples)
    # The metrics follow their definitions over the per-sample records.
    m = results["metrics"]
    assert m["tpf"] == pytest.approx(sum(s["num_tokens"] for s in samples) / sum(s["nfe"] for s in samples))
    assert m["mean_nfe"] == pytest.approx(sum(s["nfe"] for s in samples) / 200)
    assert m["aup"] == pytest.approx(m["tpf"] * 100.0)  # one point: rho * accuracy (%)
    assert m["e2e_tps"] > 0 and m["decode_tps"] >= m["e2e_tps"]  # step time is part of wall time
    assert results["ran"]["strategy"] == "multi_bd" and results["ran"]["strategy.accept_threshold"] == 0.95
    assert results["task"]["subtask"] == "add2" and results["task"]["seed"] == 1
    assert "add2: accuracy 1.0000 (200 / 200)" in proc.stdout  # logged to the console
    assert "add2: accuracy 1.0000" in (run_dir / "evaluate.log").read_text()  # ... and to the run's log file


def test_sweep_draws_the_tradeoff_with_aup_and_what_ran(tiny_root, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_script("evaluate.py", ["-m", "task=mark", "task.limit=40", "strategy=multi_bd,dmax",
                                      "strategy.accept_threshold=0.5,0.95", "runtime.max_model_len=100000",
                                      "experiment.progress=false", f"hydra.sweep.dir={sweep}"], tmp_path, tiny_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = run_script("summarize.py", [str(sweep)], tmp_path, tiny_root)
    assert summary.returncode == 0, summary.stderr
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    # What ran: dmax's preset switched sampling to edit, and the rules clamped max_model_len.
    assert [(r["strategy"], r["sampling.mode"], r["strategy.accept_threshold"]) for r in rows] == [
        ("multi_bd", "naive", "0.5"), ("multi_bd", "naive", "0.95"), ("dmax", "edit", "0.5"), ("dmax", "edit", "0.95")]
    assert all("runtime.max_model_len: 100000 -> " in r["changed by the config rules"] for r in rows)
    # Parallel decoding costs accuracy on mark: the low threshold is faster per forward and less right.
    for lo, hi in ((rows[0], rows[1]), (rows[2], rows[3])):
        assert float(lo["tpf"]) > float(hi["tpf"]) and float(lo["accuracy"]) < float(hi["accuracy"])
    assert "| strategy | points | AUP (d3LLM, accuracy in %) |" in summary.stdout
    assert (sweep / "summary.png").stat().st_size > 20_000


def test_unknown_task_lists_the_tasks(tiny_root, tmp_path):
    proc = run_script("evaluate.py", ["task=nope"], tmp_path, tiny_root)
    assert proc.returncode != 0
    assert "Could not find 'task/nope'" in proc.stderr and "add2" in proc.stderr and "gsm8k" in proc.stderr


def test_missing_data_file_names_the_path_and_format(tiny_root, tmp_path):
    proc = run_script("evaluate.py", ["task=gsm8k", f"task.path={tmp_path}/gsm8k/test.jsonl"], tmp_path, tiny_root)
    assert proc.returncode != 0
    assert f"{tmp_path}/gsm8k/test.jsonl" in proc.stderr and "#### <number>" in proc.stderr
    results = json.loads(next(tmp_path.glob("outputs/**/results.json")).read_text())
    assert results["status"] == "failed" and "does not exist" in results["error"]


def test_malformed_task_file_names_file_and_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"prompt": "a", "reference": "1"}\n{"prompt": "b", "reference": \n')
    with pytest.raises(ValueError, match=rf"{path}:2: not valid JSON"):
        JsonlTask(path=str(path)).samples()
    path.write_text('{"prompt": "a", "reference": "1"}\n\n{"prompt": "b"}\n')
    with pytest.raises(ValueError, match=rf"{path}:3: missing field\(s\) \['reference'\]"):
        JsonlTask(path=str(path)).samples()
    with pytest.raises(ValueError, match="task.path=<file>"):
        JsonlTask().samples()


class CannedEngine:
    """Answers each prompt with a fixed text (what evaluate() needs of an engine: generate)."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers, self.params = answers, []

    def generate(self, prompts, params, use_tqdm=False):
        self.params.append(params)
        trajs = [Trajectory(i, [1, 2], [7] * 4, self.answers[p], "eos", nfe=2, arrival_s=0.0, finish_s=0.5)
                 for i, p in enumerate(prompts)]
        return SimpleNamespace(trajectories=trajs, wall_time_s=1.0, prefill_time_s=0.25, decode_time_s=0.5)


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_gsm8k_reads_the_standard_file_and_scores_like_lm_eval(tmp_path):
    path = _jsonl(tmp_path / "test.jsonl", [
        {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
        {"question": "What is 1,000 + 234?", "answer": "#### 1,234"},
        {"question": "Half of 9?", "answer": "#### 4.5"}])
    shots = _jsonl(tmp_path / "train.jsonl", [{"question": "1 + 1?", "answer": "#### 2"}])
    task = GSM8K(path=path, fewshot_path=shots, num_fewshot=1)
    samples = task.samples()
    assert samples[0].prompt == ("Question: 1 + 1?\nAnswer: #### 2\n\n"
                                 "Question: Tom has 3 apples and buys 4. How many?\nAnswer:")
    assert [s.reference for s in samples] == ["7", "1234", "4.5"]
    llm = CannedEngine({samples[0].prompt: " 3 + 4 = 7 apples. #### 7", samples[1].prompt: " It is 1,234.",
                        samples[2].prompt: " 4.5 or maybe 5"})
    result = evaluate(llm, task, progress=False)
    assert [s["correct"] for s in result.samples] == [True, True, False]  # flexible: the last number
    assert llm.params[0].max_tokens == 256 and "Question:" in llm.params[0].stop
    strict_task = GSM8K(path=path, mode="strict")
    assert strict_task.is_correct(" so #### 7", strict_task.samples()[0])
    assert not strict_task.is_correct(" so 7", strict_task.samples()[0])
    bad = _jsonl(tmp_path / "bad.jsonl", [{"question": "q", "answer": "no marker"}])
    with pytest.raises(ValueError, match="no '#### <number>' line"):
        GSM8K(path=bad).samples()


def test_code_tasks_run_the_tests_only_when_allowed(tmp_path):
    he = _jsonl(tmp_path / "HumanEval.jsonl", [{
        "task_id": "HumanEval/0", "prompt": "def add(a, b):\n    \"\"\"Add.\"\"\"\n", "entry_point": "add",
        "canonical_solution": "    return a + b\n", "test": "def check(f):\n    assert f(2, 3) == 5\n"}])
    with pytest.raises(ValueError, match="allow_code_execution=true"):
        HumanEval(path=he).samples()
    task = HumanEval(path=he, allow_code_execution=True, timeout_s=5)
    (sample,) = task.samples()
    assert task.is_correct("    return a + b\n", sample)
    assert not task.is_correct("    return a - b\n", sample)
    mbpp = _jsonl(tmp_path / "mbpp.jsonl", [{"task_id": 11, "text": "Write a function to square x.",
                                             "test_list": ["assert sq(3) == 9", "assert sq(-2) == 4"],
                                             "code": "def sq(x):\n    return x * x", "test_setup_code": ""}])
    m = MBPP(path=mbpp, allow_code_execution=True, timeout_s=5)
    (s,) = m.samples()
    assert "Write a function to square x." in s.prompt and "assert sq(3) == 9" in s.prompt
    assert m.is_correct("def sq(x):\n    return x * x\n", s)
    assert not m.is_correct("def sq(x):\n    return x + x\n", s)  # sq(-2) == -4 fails the second test
    assert run_program("while True: pass\n", timeout_s=0.5) == (False, "timed out after 0.5 s")


def test_arithmetic_task_is_the_held_out_split_and_rejects_unknown_subtasks():
    task = ArithmeticTask("sub2", n=10, seed=1, limit=4)
    assert [s.prompt for s in task.samples()] == [p.prompt for p in held_out("sub2", 10, seed=1)][:4]
    assert task.extract(" -34 then") == "-34" and ArithmeticTask("mark", n=2).extract(" 0110 x") == "0110"
    with pytest.raises(ValueError, match="task.subtask='add9' is unknown"):
        ArithmeticTask("add9")


def test_wandb_gets_a_samples_table_and_batch_aggregated_steps(tiny_root, tmp_path):
    from diffulex.integrations.wandb_reader import read_offline_run

    run_dir = tmp_path / "run"
    proc = run_script("evaluate.py", ["task=mark", "task.limit=24", "logger=wandb", "experiment.batch_size=8",
                                      *THRESHOLD, f"hydra.run.dir={run_dir}"], tmp_path, tiny_root,
                      WANDB_MODE="offline")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wandb:" not in proc.stdout + proc.stderr  # no banners
    results = json.loads((run_dir / "results.json").read_text())
    run = read_offline_run(str(run_dir))
    assert run.config["task"]["subtask"] == "mark" and run.config["experiment"]["batch_size"] == 8
    assert run.summary["eval/accuracy"] == results["metrics"]["accuracy"]
    (row,) = [r for r in run.history if "samples/path" in r]
    table = json.loads(next(run_dir.glob("wandb/*/files/" + row["samples/path"])).read_text())
    assert len(table["data"]) == 24 and "correct" in table["columns"]
    keys = {k for r in run.history for k in r if not k.startswith("_")}
    # 24 samples, 3 generate calls: the chart keys are the step/* aggregate and the two tables only.
    assert {k.split("/")[0] for k in keys} == {"engine_step", "step", "requests", "samples"}
