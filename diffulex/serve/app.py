"""FastAPI routes: /health, /v1/models, /v1/completions, /v1/chat/completions (docs/serving.md)."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from typing import Any, AsyncIterator, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .engine_loop import EngineLoop, Job, QueueFull
from .protocol import FINISH_REASONS, APIError, GenerationRequest, choice, envelope, parse_request, usage

log = logging.getLogger("diffulex.serve")

DISCONNECT_POLL_S = 0.25  # a non-streamed request checks this often whether its client is still there


def error_response(err: APIError, headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


def chat_renderer(tokenizer: Any) -> Any:
    """``messages -> prompt text`` through the tokenizer's chat template; None when it has none."""
    if not getattr(tokenizer, "chat_template", None):
        return None

    def render(messages: list[dict]) -> str:
        try:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # a template error (e.g. an unsupported role) is the request's fault
            raise APIError(400, f"the chat template failed on these messages: {e}", param="messages") from None

    return render


def create_app(loop: EngineLoop, model_name: str, api_key: Optional[str] = None) -> FastAPI:
    """The ASGI app around one running :class:`EngineLoop`."""
    app = FastAPI(title="Diffulex", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine_loop = loop
    app.state.model_name = model_name
    app.state.stats = {"requests": 0, "errors": 0}
    tokenizer = loop.engine.tokenizer
    render = chat_renderer(tokenizer)
    created = int(time.time())

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(APIError(exc.status_code, str(exc.detail), code=kind))

    @app.exception_handler(Exception)
    async def _bug(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(APIError(500, f"internal error: {exc}", type="server_error"))

    @app.get("/health")
    async def health() -> JSONResponse:
        engine = loop.engine
        ok = loop.alive and not engine.is_closed
        body = {"status": "ok" if ok else "error", "model": model_name, "in_flight": loop.in_flight,
                "max_queue": loop.max_queue, "steps": loop.steps, "peak_active": loop.peak_active,
                "aborted": loop.aborted,
                "free_pages": engine.kv_cache_manager.num_free_pages}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        card = {"id": model_name, "object": "model", "created": created, "owned_by": "diffulex",
                "max_model_len": loop.engine.config.runtime.max_model_len}
        return JSONResponse({"object": "list", "data": [card]})

    async def generate(request: Request, kind: str) -> Any:
        app.state.stats["requests"] += 1
        try:
            raw = await request.body()
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as e:
                raise APIError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None
            req = parse_request(body, kind, render)
            if req.model is not None and req.model != model_name:
                raise APIError(404, f"the model {req.model!r} does not exist; this server serves {model_name!r} "
                                    "(GET /v1/models)", param="model", code="model_not_found")
            if not loop.alive:
                raise APIError(503, "the engine loop is not running", type="server_error", code="engine_down")
            job = Job(req, asyncio.Queue(), asyncio.get_running_loop())
            try:
                loop.submit(job)
            except QueueFull as e:
                return error_response(APIError(503, str(e), type="server_error", code="queue_full"),
                                      headers={"Retry-After": "1"})
        except APIError as err:
            app.state.stats["errors"] += 1
            return error_response(err)
        if req.stream:
            first = await job.events.get()  # a refused prompt is still a plain 400, not a broken stream
            if first[0] == "error":
                loop.abort(job)
                return error_response(first[2])
            return StreamingResponse(_stream(job, req), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Request-Id": req.response_id})
        return await _complete(request, job, req)

    async def _complete(request: Request, job: Job, req: GenerationRequest) -> JSONResponse:
        results: dict[int, dict] = {}
        try:
            while len(results) < len(req.prompts):
                try:
                    ev = await asyncio.wait_for(job.events.get(), DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        loop.abort(job)
                        return error_response(APIError(499, "client disconnected", code="client_closed"))
                    continue
                if ev[0] == "error":
                    loop.abort(job)
                    return error_response(ev[2])
                if ev[0] == "done":
                    results[ev[1]] = ev[2]
        except BaseException:
            loop.abort(job)
            raise
        ordered = [results[i] for i in range(len(req.prompts))]
        choices = [choice(req, i, r["text"], FINISH_REASONS.get(r["finish_reason"], r["finish_reason"]),
                          {"finish_reason": r["finish_reason"], "nfe": r["nfe"]}) for i, r in enumerate(ordered)]
        return JSONResponse(envelope(req, model_name, choices, stream=False, usage_=usage(ordered)),
                            headers={"X-Request-Id": req.response_id})

    async def _stream(job: Job, req: GenerationRequest) -> AsyncIterator[str]:
        done: dict[int, dict] = {}
        started: set[int] = set()

        def sse(obj: dict) -> str:
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

        def chunk(index: int, text: str, finish: Optional[str], extra: Optional[dict]) -> str:
            c = choice(req, index, text, finish, extra, stream=True, first=index not in started)
            started.add(index)
            return sse(envelope(req, model_name, [c], stream=True))

        try:
            while len(done) < len(req.prompts):
                ev = await job.events.get()
                kind, index, payload = ev[0], ev[1], ev[2:]
                if kind == "error":
                    err = payload[0]
                    yield sse(err.body())
                    break
                if kind == "delta":
                    text, snap = payload
                    extra = None
                    if req.stream_mode == "denoise":
                        extra = snap if snap is not None else {"provisional": False}
                    yield chunk(index, text, None, extra)
                elif kind == "done":
                    r = payload[0]
                    done[index] = r
                    extra = {"finish_reason": r["finish_reason"], "nfe": r["nfe"]}
                    if req.stream_mode == "denoise":
                        extra["provisional"] = False
                    if r["rest"]:
                        yield chunk(index, r["rest"], None, {"provisional": False} if req.stream_mode == "denoise"
                                    else None)
                    yield chunk(index, "", FINISH_REASONS.get(r["finish_reason"], r["finish_reason"]), extra)
            if len(done) == len(req.prompts) and req.include_usage:
                ordered = [done[i] for i in range(len(req.prompts))]
                yield sse(envelope(req, model_name, [], stream=True, usage_=usage(ordered)))
            yield "data: [DONE]\n\n"
        finally:
            if len(done) < len(req.prompts):
                loop.abort(job)  # the client went away (or an error): free its pages now

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await generate(request, "completion")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await generate(request, "chat")

    if api_key:
        app.add_middleware(BearerAuth, api_key=api_key)
    return app


class BearerAuth:
    """Plain ASGI middleware: ``/v1/*`` needs ``Authorization: Bearer <key>``; ``/health`` stays open.

    (Not Starlette's BaseHTTPMiddleware: it wraps ``receive`` and hides client disconnects.)
    """

    def __init__(self, app: Any, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            got = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(got, self.expected):
                err = APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                               type="authentication_error", code="invalid_api_key")
                await error_response(err)(scope, receive, send)
                return
        await self.app(scope, receive, send)
