"""Load benchmark of the OpenAI-compatible server: requests/s, latency and TTFT per concurrency.

    python experiments/serve_bench.py                                  # trained tiny llada2, in-process server
    python experiments/serve_bench.py --url http://127.0.0.1:8000 --model-name llada2   # a running server
    python experiments/serve_bench.py --concurrency 1,8,32 --requests 64 --max-tokens 48 --opt block_size=8

Without ``--url`` it builds an engine (``--model``, default the trained tiny llada2;
``--opt key=value`` engine options) and serves it on a free loopback port in this process.
For each concurrency ``c`` (default 1, 8, 32), ``c`` clients send ``--requests`` streaming
``/v1/completions`` requests in total (the prompt set cycles through held-out ``add2`` and
``mark`` problems), each client one request at a time, and report:

- ``req/s``: completed requests / wall time of the level;
- ``p50`` / ``p99`` latency: request sent -> ``[DONE]``;
- ``TTFT`` p50 / p99: request sent -> first chunk with text (committed mode: the first committed block);
- ``tok/s``: completion tokens (from the usage chunk) / wall time.

Not a test: numbers depend on the machine (docs/serving.md records some).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any

import httpx

PROMPTS = ["Solve: 12 + 30.", "Mark 3 of 7 3 9 1 5 8 2 6.", "Solve: 53 + 70.", "Mark 5 of 5 1 5 2 5 3 4 6.",
           "Solve: 98 + 26.", "Mark 1 of 1 2 1 3 1 4 1 5.", "Solve: 7 + 8.", "Mark 9 of 9 9 2 3 9 4 5 6."]


def one_request(http: httpx.Client, url: str, model: str, prompt: str, max_tokens: int, mode: str) -> dict:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True}, "diffulex": {"stream_mode": mode}}
    t0 = time.perf_counter()
    ttft, tokens, text = None, 0, ""
    with http.stream("POST", url + "/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {r.read().decode()}")
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for c in chunk.get("choices", []):
                if c.get("text"):
                    text += c["text"]
                    if ttft is None:
                        ttft = time.perf_counter() - t0
    latency = time.perf_counter() - t0
    return {"latency": latency, "ttft": ttft if ttft is not None else latency, "tokens": tokens, "text": text}


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def run_level(url: str, model: str, concurrency: int, total: int, max_tokens: int, mode: str) -> dict:
    results: list[dict] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(total))

    def client() -> None:
        with httpx.Client(timeout=600) as http:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                try:
                    r = one_request(http, url, model, PROMPTS[i % len(PROMPTS)], max_tokens, mode)
                except Exception as e:  # reported, not raised: a benchmark counts failures
                    with lock:
                        errors.append(str(e))
                    continue
                with lock:
                    results.append(r)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = [r["latency"] for r in results]
    ttft = [r["ttft"] for r in results]
    return {"concurrency": concurrency, "requests": len(results), "errors": len(errors), "wall_s": wall,
            "req_per_s": len(results) / wall, "tok_per_s": sum(r["tokens"] for r in results) / wall,
            "p50_latency_ms": 1e3 * percentile(lat, 0.5), "p99_latency_ms": 1e3 * percentile(lat, 0.99),
            "p50_ttft_ms": 1e3 * percentile(ttft, 0.5), "p99_ttft_ms": 1e3 * percentile(ttft, 0.99),
            "first_error": errors[0] if errors else None}


def main(argv: Any = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default=None, help="a running server (default: start one in this process)")
    p.add_argument("--model", default=None, help="checkpoint for the in-process server (default: trained tiny llada2)")
    p.add_argument("--model-name", default=None, help="the model id to send (default: GET /v1/models)")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE", help="engine option (in-process server)")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--stream-mode", default="committed", choices=["committed", "denoise"])
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--json", default=None, help="also write the rows to this file")
    args = p.parse_args(argv)
    levels = [int(x) for x in args.concurrency.split(",") if x]

    server = llm = None
    url = args.url
    if url is None:
        from diffulex import Diffulex
        from diffulex.serve.cli import parse_options
        from diffulex.serve.server import ServerThread

        path = args.model
        if path is None:
            from diffulex.tiny import ensure_tiny_checkpoint

            path = str(ensure_tiny_checkpoint("llada2", trained=True))
        llm = Diffulex(path, **{"decoding_strategy": "multi_bd", **parse_options(args.opt)})
        server = ServerThread(llm, port=0, max_queue=max(256, max(levels) * 2)).start()
        url = server.url
    try:
        model = args.model_name or httpx.get(url + "/v1/models").json()["data"][0]["id"]
        if args.warmup:
            run_level(url, model, 1, args.warmup, args.max_tokens, args.stream_mode)
        rows = [run_level(url, model, c, args.requests, args.max_tokens, args.stream_mode) for c in levels]
    finally:
        if server is not None:
            server.stop()
        if llm is not None:
            llm.exit()
    print(f"{'clients':>7} {'reqs':>5} {'err':>4} {'req/s':>8} {'tok/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'TTFT p50':>9} {'TTFT p99':>9}")
    for r in rows:
        print(f"{r['concurrency']:>7} {r['requests']:>5} {r['errors']:>4} {r['req_per_s']:>8.1f} "
              f"{r['tok_per_s']:>8.1f} {r['p50_latency_ms']:>8.1f} {r['p99_latency_ms']:>8.1f} "
              f"{r['p50_ttft_ms']:>9.1f} {r['p99_ttft_ms']:>9.1f}")
        if r["first_error"]:
            print(f"        first error: {r['first_error']}", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
