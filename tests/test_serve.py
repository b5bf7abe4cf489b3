"""The OpenAI-compatible server (diffulex/serve, docs/serving.md) on the trained tiny llada2, on CPU.

One engine and one server (in a thread, loopback, a free port) for the module; the real
``openai`` client talks to it. Pins: streamed (both modes) and non-streamed text equal
``Diffulex.generate``'s for the same prompt and seed, stop strings included; 32 concurrent
streams each get their solo answer; a disconnect aborts the request and frees its pages; bad
requests are 4xx with an OpenAI error body and the server keeps serving; a full queue is a 503;
``python -m diffulex.serve`` and ``experiments/serve.py`` serve; lm-eval's ``local-completions``
scores ``diffulex_add2`` like the in-process adapter. Needs the ``serve`` extra.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve]'")
pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install -e '.[serve]'")
openai = pytest.importorskip("openai", reason="the serve extra is not installed: pip install -e '.[serve]'")
httpx = pytest.importorskip("httpx", reason="the serve extra is not installed: pip install -e '.[serve]'")

from diffulex import Diffulex, SamplingParams  # noqa: E402
from diffulex.serve.protocol import APIError, parse_request  # noqa: E402
from diffulex.serve.server import ServerThread  # noqa: E402
from diffulex.serve.streaming import CommittedText  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OPTIONS = dict(decoding_strategy="multi_bd", block_size=8)
ADD = "Solve: 12 + 30."
MARK = "Mark 3 of 7 3 9 1 5 8 2 6."  # an 8-digit answer: two blocks of 8
PROMPTS = [ADD, MARK, "Solve: 53 + 70.", "Mark 5 of 5 1 5 2 5 3 4 6.", "Solve: 98 + 26.",
           "Mark 1 of 1 2 1 3 1 4 1 5.", "Solve: 7 + 8.", "Mark 9 of 9 9 2 3 9 4 5 6."]


@pytest.fixture(scope="module")
def ckpt() -> str:
    from diffulex.tiny import ensure_tiny_checkpoint

    return str(ensure_tiny_checkpoint("llada2", trained=True))


@pytest.fixture(scope="module")
def llm(ckpt):
    with Diffulex(ckpt, **OPTIONS) as engine:
        yield engine


@pytest.fixture(scope="module")
def solo(llm):
    """Each prompt's greedy answer when it runs alone (computed before the server owns the engine)."""
    sp = SamplingParams(max_tokens=48)
    return {p: llm.generate([p], sp).trajectories[0].text for p in PROMPTS}


@pytest.fixture(scope="module")
def add2_in_process(llm):
    """lm-eval's in-process ``diffulex`` adapter on diffulex_add2 (None without the eval extra)."""
    try:
        from lm_eval import simple_evaluate
    except ImportError:
        return None
    from diffulex.integrations.lm_eval_model import DiffulexLM

    return simple_evaluate(model=DiffulexLM(pretrained=llm), tasks=["diffulex_add2"], task_manager=add2_tasks(),
                           log_samples=True)


def add2_tasks():
    from lm_eval.tasks import TaskManager

    from diffulex.integrations.lm_eval_tasks import TASK_DIR

    return TaskManager(include_path=str(TASK_DIR), include_defaults=False)


@pytest.fixture(scope="module")
def server(llm, solo, references, add2_in_process):
    idle = llm.kv_cache_manager.num_free_pages
    with ServerThread(llm, port=0, max_queue=64) as s:
        s.idle_pages = idle
        yield s
    assert llm.kv_cache_manager.num_free_pages == idle


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def model_id(client) -> str:
    return client.models.list().data[0].id


def wait_idle(server, timeout=20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = httpx.get(server.url + "/health").json()
        if h["in_flight"] == 0 and h["free_pages"] == server.idle_pages:
            return
        time.sleep(0.05)
    raise AssertionError(f"server not idle: {h}, idle pages {server.idle_pages}")


def streamed(client, mode=None, **kw) -> tuple[list[str], list]:
    extra = {"extra_body": {"diffulex": {"stream_mode": mode}}} if mode else {}
    chunks = list(client.completions.create(model=model_id(client), stream=True, **kw, **extra))
    return [c.choices[0].text for c in chunks if c.choices], chunks


# -- same text as Diffulex.generate ----------------------------------------------------------
CASES = {
    "greedy": dict(prompt=MARK, max_tokens=48),
    "short": dict(prompt=ADD, max_tokens=32),
    "stop": dict(prompt=MARK, max_tokens=48, stop=["01"]),  # a stop string inside the second block
    "seeded": dict(prompt=MARK, max_tokens=48, temperature=1.0, seed=7),
    "top_p_top_k": dict(prompt=MARK, max_tokens=48, temperature=0.8, top_p=0.9, top_k=5, seed=3),
}


@pytest.fixture(scope="module")
def references(llm):
    """Diffulex.generate's text for each case (before the server's loop owns the engine)."""
    out = {}
    for name, c in CASES.items():
        sp = SamplingParams(**{k: v for k, v in c.items() if k != "prompt"})
        out[name] = llm.generate([c["prompt"]], sp).trajectories[0].text
    return out


def openai_kwargs(case: dict, mode=None) -> dict:
    """``top_k`` and the stream mode are extensions: the openai client sends them in ``extra_body``."""
    kw = {k: v for k, v in case.items() if k != "top_k"}
    extra = {"top_k": case["top_k"]} if "top_k" in case else {}
    if mode:
        extra["diffulex"] = {"stream_mode": mode}
    return {**kw, "extra_body": extra} if extra else kw


@pytest.mark.parametrize("name", list(CASES))
def test_text_equals_generate(server, client, references, name):
    case = CASES[name]
    whole = client.completions.create(model=model_id(client), **openai_kwargs(case))
    text = whole.choices[0].text
    assert text == references[name]
    u = whole.usage.model_dump()
    assert u["prompt_tokens"] > 0 and u["completion_tokens"] > 0 and u["nfe"] >= 1
    assert u["tpf"] == pytest.approx(u["completion_tokens"] / u["nfe"])
    for mode in (None, "committed", "denoise"):
        chunks = list(client.completions.create(model=model_id(client), stream=True, **openai_kwargs(case, mode)))
        parts = [c.choices[0].text for c in chunks if c.choices]
        assert "".join(parts) == text, (mode, parts)
        assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    if name == "stop":
        assert "01" not in text and len(text) < 9
        assert whole.choices[0].model_extra["diffulex"]["finish_reason"] == "stop"


def test_committed_chunks_are_whole_blocks_and_denoise_snapshots_are_provisional(server, client):
    parts, chunks = streamed(client, "committed", prompt=MARK, max_tokens=48)
    assert [p for p in parts if p] == [" 00011", "010"]  # block 3 commits (5 answer tokens), then the rest
    parts, chunks = streamed(client, "denoise", prompt=MARK, max_tokens=48)
    snaps = [c.choices[0].model_extra["diffulex"] for c in chunks if c.choices]
    canvases = [s for s in snaps if s.get("provisional")]
    assert len(canvases) >= 8 and all("canvas" in s and "blocks" in s for s in canvases)
    assert any("\u25af" in s["canvas"] for s in canvases)  # undecided positions are shown
    assert snaps[-1] == {"finish_reason": "eos", "nfe": snaps[-1]["nfe"], "provisional": False}


def test_chat_completions(server, client, ckpt):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ckpt)
    messages = [{"role": "user", "content": ADD}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    plain = client.completions.create(model=model_id(client), prompt=prompt, max_tokens=32).choices[0].text
    chat = client.chat.completions.create(model=model_id(client), messages=messages, max_tokens=32)
    assert chat.choices[0].message.content == plain and chat.id.startswith("chatcmpl-")
    stream = client.chat.completions.create(model=model_id(client), messages=messages, max_tokens=32, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == plain
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].usage.completion_tokens >= 1
    with pytest.raises(APIError, match="no chat template") as e:
        parse_request({"messages": messages}, "chat", chat_template=None)
    assert e.value.status == 400 and e.value.param == "messages"


# -- many clients at once ------------------------------------------------------------------
def test_32_concurrent_streams_each_get_their_solo_answer(server, client, solo):
    wait_idle(server)
    steps0 = httpx.get(server.url + "/health").json()["steps"]
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(32)]

    def one(prompt):
        parts, chunks = streamed(client, prompt=prompt, max_tokens=48)
        return prompt, "".join(parts), {c.id for c in chunks}

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(one, prompts))
    assert len(results) == 32
    for prompt, text, ids in results:
        assert text == solo[prompt], prompt
        assert len(ids) == 1  # one request id per stream
    assert len({next(iter(ids)) for _, _, ids in results}) == 32
    wait_idle(server)
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok"
    # continuous batching: the requests shared steps (one after the other they take 192 steps)
    assert health["peak_active"] >= 4 and health["steps"] - steps0 < 160, health


# -- disconnects, errors, queue ------------------------------------------------------------
def test_disconnect_mid_stream_aborts_and_frees_pages(llm, server, client):
    wait_idle(server)
    body = {"prompt": MARK, "max_tokens": 200, "stream": True, "diffulex": {"ignore_eos": True}}
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", server.url + "/v1/completions", json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            assert json.loads(first[6:])["choices"][0]["text"]
            reqs = list(llm._requests.values())
            assert len(reqs) == 1 and llm.kv_cache_manager.num_free_pages < server.idle_pages
    wait_idle(server)
    assert reqs[0].finish_reason == "aborted" and not llm._requests
    assert client.completions.create(model=model_id(client), prompt=ADD, max_tokens=16).choices[0].text == " 42"


def test_non_streamed_client_that_leaves_is_aborted(llm, server, client, monkeypatch):
    wait_idle(server)
    aborted = httpx.get(server.url + "/health").json()["aborted"]
    real = llm.step

    def slow():  # ~37 steps of 50 ms: the request outlives the client's 0.3 s
        time.sleep(0.05)
        return real()

    monkeypatch.setattr(llm, "step", slow)
    body = {"prompt": MARK, "max_tokens": 200, "diffulex": {"ignore_eos": True}}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/completions", json=body, timeout=httpx.Timeout(10, read=0.3))
    wait_idle(server)
    monkeypatch.setattr(llm, "step", real)
    assert httpx.get(server.url + "/health").json()["aborted"] == aborted + 1 and not llm._requests


def test_a_failing_engine_step_fails_its_requests_and_the_loop_serves_on(llm, server, client, monkeypatch):
    wait_idle(server)
    real = llm.step

    def broken():
        monkeypatch.setattr(llm, "step", real)  # fails once
        raise RuntimeError("injected failure")

    monkeypatch.setattr(llm, "step", broken)
    r = httpx.post(server.url + "/v1/completions", json={"prompt": ADD, "max_tokens": 16})
    assert r.status_code == 500 and r.json()["error"]["code"] == "engine_error" and "injected" in r.text
    wait_idle(server)
    assert client.completions.create(model=model_id(client), prompt=ADD, max_tokens=16).choices[0].text == " 42"


@pytest.mark.parametrize("send,status,param,words", [
    (dict(content=b"{not json"), 400, None, "not valid JSON"),
    (dict(json=["a list"]), 400, None, "JSON object"),
    (dict(json={"prompt": "x " * 400}), 400, "prompt", "max_model_len"),
    (dict(json={"prompt": ADD, "max_tokens": 0}), 400, "max_tokens", "max_tokens=0"),
    (dict(json={"prompt": ADD, "temperature": -1}), 400, "temperature", "temperature=-1"),
    (dict(json={"prompt": ADD, "top_p": 2}), 400, "top_p", "top_p=2"),
    (dict(json={"prompt": ADD, "seed": "x"}), 400, "seed", "seed='x'"),
    (dict(json={"prompt": ADD, "model": "no-such-model"}), 404, "model", "does not exist"),
    (dict(json={"prompt": ADD, "tempurature": 1}), 400, "tempurature", "unknown field"),
    (dict(json={"prompt": ADD, "n": 2}), 400, "n", "not supported"),
    (dict(json={"prompt": ADD, "stream_mode": "fast"}), 400, "stream_mode", "stream_mode='fast'"),
    (dict(json={"prompt": ADD, "stream": True, "max_tokens": -3}), 400, "max_tokens", "max_tokens=-3"),
    (dict(json={"prompt": "x " * 400, "stream": True}), 400, "prompt", "max_model_len"),
    (dict(json={"max_tokens": 4}), 400, "prompt", "required"),
    (dict(json={"prompt": [[1, 2], "x"]}), 400, "prompt", "prompt must be"),
    (dict(json={"prompt": [10 ** 9]}), 400, "prompt", "token ids must be ints"),
])
def test_bad_requests_are_4xx_and_the_next_request_works(server, client, send, status, param, words):
    r = httpx.post(server.url + "/v1/completions", **send, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["param"] == param and words in err["message"]
    assert client.completions.create(model=model_id(client), prompt=ADD, max_tokens=16).choices[0].text == " 42"
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


def test_unknown_route_and_method_are_openai_errors(server):
    r = httpx.get(server.url + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert httpx.get(server.url + "/v1/completions").status_code == 405


def test_full_queue_is_503_then_recovers(server, client):
    wait_idle(server)
    loop = server.loop
    loop.max_queue = 1
    try:
        body = {"prompt": MARK, "max_tokens": 200, "stream": True, "diffulex": {"ignore_eos": True}}
        with httpx.Client(timeout=30) as http:
            with http.stream("POST", server.url + "/v1/completions", json=body) as r:
                assert r.status_code == 200
                busy = http.post(server.url + "/v1/completions", json={"prompt": ADD})
                assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
                assert busy.json()["error"]["code"] == "queue_full"
    finally:
        loop.max_queue = 64
    wait_idle(server)
    assert client.completions.create(model=model_id(client), prompt=ADD, max_tokens=16).choices[0].text == " 42"


def test_list_prompt_gives_one_choice_each(server, client, solo):
    out = client.completions.create(model=model_id(client), prompt=[ADD, MARK], max_tokens=48)
    assert [c.text for c in sorted(out.choices, key=lambda c: c.index)] == [solo[ADD], solo[MARK]]


def test_committed_text_holds_back_a_possible_stop_string():
    decode = "".join
    t = CommittedText(lambda ids: decode(ids), ["END"])
    assert t.update(list("abcE")) == "ab"  # "cE" could start "END"
    assert t.update(list("abcEN")) == "c"  # "EN" still could
    assert t.update(list("abcEN")) == ""  # no new committed token: nothing to decode
    assert t.finish("abc") == ""  # the final text was cut at "END"
    assert t.sent == "abc"


def test_api_key(llm):
    from fastapi.testclient import TestClient

    from diffulex.serve.app import create_app
    from diffulex.serve.engine_loop import EngineLoop

    app = create_app(EngineLoop(llm), "m", api_key="sekret")  # the loop is not started: auth comes first
    with TestClient(app) as http:
        assert http.get("/v1/models").status_code == 401
        assert http.get("/v1/models", headers={"Authorization": "Bearer wrong"}).json()["error"]["code"] \
            == "invalid_api_key"
        assert http.get("/v1/models", headers={"Authorization": "Bearer sekret"}).json()["data"][0]["id"] == "m"
        assert http.get("/health").status_code == 503  # open without a key; the loop is not running


def test_lm_eval_local_completions_scores_like_the_in_process_adapter(server, add2_in_process):
    pytest.importorskip("lm_eval", reason="lm-eval is not installed: pip install -e '.[eval]'")
    from lm_eval import simple_evaluate
    from lm_eval.api.registry import get_model

    model = get_model("local-completions").create_from_arg_string(
        f"base_url={server.url}/v1/completions,model={server.model_name},tokenizer_backend=None,"
        "num_concurrent=8,max_retries=1")
    theirs = simple_evaluate(model=model, tasks=["diffulex_add2"], task_manager=add2_tasks(), log_samples=True)
    ours = add2_in_process
    assert theirs["results"]["diffulex_add2"]["acc,none"] == ours["results"]["diffulex_add2"]["acc,none"]

    def per_sample(out):
        return {r["arguments"][0][0]: (r["resps"], r["acc"]) for r in out["samples"]["diffulex_add2"]}

    assert per_sample(theirs) == per_sample(ours) and len(per_sample(ours)) == 200
    wait_idle(server)


# -- the command lines -----------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_subprocess(args, cwd, port):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", WANDB_MODE="disabled",
               OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json={"prompt": ADD, "max_tokens": 16}, timeout=30)
        return r.json()["choices"][0]["text"]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
        assert proc.returncode == 0, out


def test_python_m_diffulex_serve(ckpt, tmp_path):
    port = free_port()
    args = ["-m", "diffulex.serve", "--model", ckpt, "--opt", "decoding_strategy=multi_bd", "--opt", "block_size=8",
            "--port", str(port), "--log-level", "warning"]
    assert serve_subprocess(args, tmp_path, port) == " 42"


def test_experiments_serve_hydra(tmp_path):
    port = free_port()
    args = [str(REPO / "experiments" / "serve.py"), "strategy.block_size=8", f"+experiment.serve.port={port}",
            "+experiment.serve.log_level=warning", f"hydra.run.dir={tmp_path}/run"]
    assert serve_subprocess(args, tmp_path, port) == " 42"


def test_cli_bad_option_is_one_line(ckpt):
    from diffulex.serve.cli import parse_options

    assert parse_options(["accept_threshold=0.9", "decoding_strategy=multi_bd", "use_lora=false"]) == \
        {"accept_threshold": 0.9, "decoding_strategy": "multi_bd", "use_lora": False}
    with pytest.raises(ValueError, match="key=value"):
        parse_options(["block_size"])
