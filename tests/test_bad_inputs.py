"""Reliability of the single-process engine on bad input and broken weights (issue "Reliability").

Pins: non-finite logits end the step with an error naming the cause instead of looping or
returning garbage, and the engine stays usable; a batch with one bad prompt queues nothing; a
forced block that gets no token is an error; small input gaps are clear errors.
"""

from __future__ import annotations

import glob
import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffulex import Diffulex, SamplingParams
from diffulex.engine.components import EngineComponents
from diffulex.sampling.base import Decision, Sampler
from diffulex.tiny import ensure_tiny_checkpoint


@pytest.fixture(scope="module")
def trained():
    return str(ensure_tiny_checkpoint("llada2", trained=True))


@pytest.fixture(scope="module")
def llm(trained):
    with Diffulex(trained) as engine:
        yield engine


def _nan_checkpoint(src: str, dst) -> str:
    shutil.copytree(src, dst)
    for f in sorted(glob.glob(f"{dst}/*.safetensors")):
        w = load_file(f)
        keys = [k for k in w if "layers.0.attention.query_key_value" in k]
        if keys:
            for k in keys:
                w[k][:] = float("nan")
            save_file(w, f, metadata={"format": "pt"})
    return str(dst)


@pytest.mark.timeout(60)
def test_nan_weights_are_an_error_naming_the_cause_not_a_loop(trained, tmp_path):
    with Diffulex(_nan_checkpoint(trained, tmp_path / "nan")) as llm:
        for _ in range(2):  # the engine stays usable: the same clear error again, nothing left queued
            with pytest.raises(RuntimeError, match=r"non-finite logits \(NaN or inf\) for request\(s\)"):
                llm.generate(["Solve: 1 + 2.", "Solve: 3 + 4."], SamplingParams(max_tokens=8))
            assert llm._requests == {} and llm.is_finished()


class NeverFills(Sampler):
    """A broken sampler: decides nothing, ever."""

    def decide(self, batch, logits, reqs, forbidden):
        return [Decision() for _ in reqs]


@pytest.mark.timeout(60)
def test_a_forced_block_without_progress_is_an_error(trained):
    probe = Diffulex(trained)
    components = EngineComponents.for_config(probe.config).replace(sampler=NeverFills)
    probe.exit()
    with Diffulex(trained, components=components) as llm:
        with pytest.raises(RuntimeError, match=r"made no progress in a step that had to fill a block"):
            llm.generate(["Solve: 1 + 2."], SamplingParams(max_tokens=8))


def test_one_bad_prompt_queues_nothing(llm):
    for _ in range(5):
        with pytest.raises(ValueError, match="prompt is empty"):
            llm.generate(["Solve: 1 + 2.", ""], SamplingParams(max_tokens=8))
    assert llm._requests == {} and llm.is_finished()
    out = llm.generate(["Solve: 1 + 2."], SamplingParams(max_tokens=8))
    assert out[0].text.split()[0] == "3" and llm._requests == {}


@pytest.mark.parametrize("prompt, message", [
    ([5, True, 7], r"token ids must be ints in \[0, \d+\), got True \(a bool\)"),
    ([5, 7.0], r"got 7.0 \(a float\)"),
    ("bad \ud800 text", r"prompt is not valid text: surrogates not allowed at character 4"),
    (42, "a prompt is a str or a list of token ids, got int"),
])
def test_bad_prompts_are_clear_errors(llm, prompt, message):
    with pytest.raises(ValueError, match=message):
        llm.generate([prompt], SamplingParams(max_tokens=8))


def test_seed_range_is_named():
    SamplingParams(seed=2**64 - 1)
    with pytest.raises(ValueError, match=r"seed.*\[0, 2\*\*64 - 1\]"):
        SamplingParams(seed=2**64)


def test_max_tokens_clamp_is_logged_once(trained, caplog):
    with Diffulex(trained, max_model_len=64) as llm, caplog.at_level(logging.WARNING, logger="diffulex"):
        llm.generate(["Solve: 1 + 2.", "Solve: 2 + 2."], SamplingParams(max_tokens=1000))
        llm.generate(["Solve: 1 + 2."], SamplingParams(max_tokens=1000))
    clamps = [r for r in caplog.records if "max_tokens=1000 is more than the room" in r.getMessage()]
    assert len(clamps) == 1


def _copy(trained: str, dst) -> str:
    shutil.copytree(trained, dst)
    return str(dst)


def test_broken_checkpoint_files_are_named(trained, tmp_path):
    import json

    from diffulex.config import Config

    bad_tok = _copy(trained, tmp_path / "tok")
    (tmp_path / "tok" / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"tok/tokenizer.json is not valid JSON"):
        Config(bad_tok)
    bad_cfg = _copy(trained, tmp_path / "cfg")
    cfg = json.loads((tmp_path / "cfg" / "config.json").read_text())
    (tmp_path / "cfg" / "config.json").write_text(json.dumps({**cfg, "hidden_size": -64}))
    with pytest.raises(ValueError, match=r"config.json: hidden_size=-64 is invalid"):
        Config(bad_cfg)


def test_a_shard_outside_the_checkpoint_is_refused(trained, tmp_path):
    import json

    from diffulex.models.weights import checkpoint_files

    path = _copy(trained, tmp_path / "ckpt")
    index = tmp_path / "ckpt" / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    for evil in ("../other/model.safetensors", "/etc/passwd"):
        key = next(iter(data["weight_map"]))
        index.write_text(json.dumps({**data, "weight_map": {**data["weight_map"], key: evil}}))
        with pytest.raises(ValueError, match="names shards outside the checkpoint folder"):
            checkpoint_files(path)


def test_prompt_set_is_a_name_not_a_path():
    from diffulex.integrations.prompts import load_prompts

    with pytest.raises(ValueError, match="is not a shipped prompt set"):
        load_prompts(prompt_set="../prompt_sets/arith")
    assert load_prompts(prompt_set="arith")[0]


def test_a_relative_path_with_a_tiny_preset_resolves_under_the_model_root(trained, tmp_path, monkeypatch):
    from diffulex.config import Config

    shutil.copytree(trained, tmp_path / "root" / "mine")
    monkeypatch.chdir(tmp_path)  # the current directory has no "mine": only the root does
    cfg = Config("mine", tiny="llada2", trained=True, model_root=str(tmp_path / "root"))
    assert cfg.model.path == str(tmp_path / "root" / "mine")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]  # nothing written under the cwd


class AbortOther:
    """An observer that aborts request ``victim`` from inside the step of request ``at``."""

    def __init__(self, llm, victim: int, at: int) -> None:
        self.llm, self.victim, self.at, self.done = llm, victim, at, False

    def on_step(self, request_id, record):
        if request_id == self.at and not self.done:
            self.done = self.llm.abort_request(self.victim)

    def on_request_finished(self, trajectory):
        pass

    def on_generate_end(self, outputs):
        pass

    def close(self):
        pass


@pytest.mark.parametrize("victim, at", [(1, 0), (0, 1)])
def test_abort_from_an_observer_inside_a_step_is_safe(trained, victim, at):
    with Diffulex(trained, block_size=8) as llm:
        idle = llm.kv_cache_manager.num_free_pages
        base = llm._next_id
        obs = AbortOther(llm, base + victim, base + at)
        llm.observers.append(obs)
        out = llm.generate(["Mark 3 of 7 3 9 1 5 8 2 6.", "Mark 4 of 1 2 3 4 5 6 7 8."],
                           SamplingParams(max_tokens=24))
        assert obs.done and out[victim].finish_reason == "aborted" and out[at].finish_reason == "eos"
        assert llm.kv_cache_manager.num_free_pages == idle and llm._requests == {}


def test_abort_from_another_thread_at_random_moments(trained):
    import random
    import threading
    import time

    rng = random.Random(0)
    with Diffulex(trained, block_size=8) as llm:
        idle = llm.kv_cache_manager.num_free_pages
        for _ in range(20):
            first = llm._next_id
            timer = threading.Timer(rng.uniform(0.0, 0.02), llm.abort_request, args=(first + rng.randrange(4),))
            timer.start()
            out = llm.generate(["Mark 3 of 7 3 9 1 5 8 2 6."] * 4, SamplingParams(max_tokens=24))
            timer.join()
            assert {t.finish_reason for t in out} <= {"eos", "aborted"}
            assert llm.kv_cache_manager.num_free_pages == idle and llm._requests == {}
            time.sleep(0)


@pytest.mark.parametrize("family, strategy", [("llada2", "multi_bd"), ("llada", "d2f")])
def test_a_block_larger_than_a_page_gives_the_same_tokens(family, strategy):
    """block_size > page_size is allowed: a block's KV spans several pages, with the same result."""
    path = str(ensure_tiny_checkpoint(family, trained=True))
    prompts = ["Mark 3 of 7 3 9 1 5 8 2 6.", "Solve: 4821 + 3390.", "Mark 2 of 1 2 3 4."]
    tokens = {}
    for page in (32, 8, 4):
        with Diffulex(path, decoding_strategy=strategy, block_size=32, page_size=page, accept_threshold=0.7) as llm:
            tokens[page] = [t.token_ids for t in llm.generate(prompts, SamplingParams(max_tokens=40))]
    assert tokens[8] == tokens[32] and tokens[4] == tokens[32]


def _marked_checkpoint(trained: str, dst) -> str:
    """A copy whose configuration module and tokenizer module append to $DIFFULEX_TEST_MARKER when they run."""
    import json

    shutil.copytree(trained, dst)
    module = next(dst.glob("configuration_*.py"))
    mark = "import os\nopen(os.environ['DIFFULEX_TEST_MARKER'], 'a').write('ran\\n')\n"
    module.write_text(mark + module.read_text())
    (dst / "tokenization_marked.py").write_text(
        mark + "from transformers import PreTrainedTokenizerFast\n\n\nclass MarkedTokenizer(PreTrainedTokenizerFast):\n    pass\n")
    tok = json.loads((dst / "tokenizer_config.json").read_text())
    tok["auto_map"] = {"AutoTokenizer": [None, "tokenization_marked.MarkedTokenizer"]}
    tok["tokenizer_class"] = "MarkedTokenizer"
    (dst / "tokenizer_config.json").write_text(json.dumps(tok))
    return str(dst)


def test_trust_remote_code_false_runs_no_checkpoint_code(trained, tmp_path, monkeypatch):
    import json
    import subprocess
    import sys

    path = _marked_checkpoint(trained, tmp_path / "ckpt")
    marker = tmp_path / "marker"
    code = ("import sys; from diffulex import Diffulex, SamplingParams\n"
            "with Diffulex(sys.argv[1], trust_remote_code=sys.argv[2] == 'true') as llm:\n"
            "    print(llm.generate(['Solve: 12 + 30.'], SamplingParams(max_tokens=8))[0].text)\n")
    env = {**__import__("os").environ, "DIFFULEX_TEST_MARKER": str(marker), "HF_HUB_OFFLINE": "1",
           "HF_MODULES_CACHE": str(tmp_path / "modules")}
    seed_rule = subprocess.run([sys.executable, "-c", code, path, "true"], env=env, capture_output=True,
                               text=True, timeout=120)
    assert seed_rule.returncode == 0, seed_rule.stderr[-2000:]
    assert seed_rule.stdout.split()[-1] == "42" and marker.read_text().startswith("ran")  # the seed's default
    marker.unlink()
    safe = subprocess.run([sys.executable, "-c", code, path, "false"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert safe.returncode == 0, safe.stderr[-2000:]
    assert safe.stdout.split()[-1] == "42" and not marker.exists()  # same answer, no checkpoint code ran
    # A model type Diffulex does not implement, which would need its code: refused when untrusted.
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({**cfg, "model_type": "mystery_moe"}))
    from diffulex.config import Config

    with pytest.raises(ValueError, match=r"needs the checkpoint's own code .*model.trust_remote_code is false"):
        Config(path, trust_remote_code=False)
