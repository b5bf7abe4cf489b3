"""OpenAI wire format: error bodies, request parsing into ``SamplingParams``, response objects.

Requests are plain JSON dicts checked here field by field, so every mistake is a 400 whose
OpenAI-style body names the field (``{"error": {"message", "type", "param", "code"}}``).
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from ..sampling_params import SamplingParams

STREAM_MODES = ("committed", "denoise")

# OpenAI fields accepted only at their neutral value (we cannot honour anything else).
_NEUTRAL = {"n": (1,), "echo": (False,), "logprobs": (None, False), "top_logprobs": (None, 0),
            "presence_penalty": (0, 0.0), "frequency_penalty": (0, 0.0), "best_of": (1,), "suffix": (None, ""),
            "logit_bias": (None,), "parallel_tool_calls": (None,), "tools": (None,), "tool_choice": (None, "none"),
            "response_format": (None,)}
_SAMPLING = ("temperature", "top_p", "top_k", "max_tokens", "stop", "seed")
_COMMON = {"model", "stream", "stream_options", "user", "stream_mode", "diffulex", "ignore_eos",
           *_SAMPLING, *_NEUTRAL}
COMPLETION_FIELDS = _COMMON | {"prompt"}
CHAT_FIELDS = _COMMON | {"messages", "max_completion_tokens"}
DIFFULEX_FIELDS = ("stream_mode", "ignore_eos", "max_nfe", "max_repetition_run")
# Engine finish reasons -> OpenAI's (the raw one is kept in choice["diffulex"]["finish_reason"]).
FINISH_REASONS = {"eos": "stop", "stop": "stop", "repetition": "stop", "length": "length", "max_nfe": "length",
                  "aborted": "abort"}


class APIError(Exception):
    """An error answered to one request (never raised out of the engine loop)."""

    def __init__(self, status: int, message: str, param: Optional[str] = None,
                 type: str = "invalid_request_error", code: Optional[str] = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(param: Optional[str], message: str, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def from_value_error(e: ValueError, param: Optional[str] = None) -> APIError:
    """A Diffulex ValueError as a 400; ``SamplingParams.<field>=...`` names its field."""
    m = re.match(r"SamplingParams\.(\w+)=", str(e))
    return bad(m.group(1) if m else param, str(e))


@dataclass
class GenerationRequest:
    """One parsed /v1/completions or /v1/chat/completions body."""

    kind: str  # "completion" | "chat"
    prompts: list[Union[str, list[int]]]  # one engine request (one choice) each
    sampling_params: SamplingParams
    stream: bool = False
    stream_mode: str = "committed"
    include_usage: bool = False
    model: Optional[str] = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def response_id(self) -> str:
        return ("chatcmpl-" if self.kind == "chat" else "cmpl-") + self.id


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _prompts(value: Any) -> list[Union[str, list[int]]]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(_is_int(t) for t in value):
            return [list(value)]
        if all(isinstance(p, str) for p in value):
            return list(value)
        if all(isinstance(p, list) and p and all(_is_int(t) for t in p) for p in value):
            return [list(p) for p in value]
    raise bad("prompt", "prompt must be a non-empty string, a list of strings, a list of token ids or a list of "
                        "token-id lists")


def _messages(value: Any) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise bad("messages", "messages must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise bad(f"messages[{i}]", f"messages[{i}] must be an object with a string 'role'")
        content = m.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise bad(f"messages[{i}].content", "only text content parts are supported")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise bad(f"messages[{i}].content", f"messages[{i}].content must be a string or a list of text parts")
        out.append({"role": m["role"], "content": content})
    return out


def parse_request(body: Any, kind: str, chat_template: Any = None) -> GenerationRequest:
    """Validate a request body; ``chat_template(messages) -> str`` renders chat prompts.

    Raises :class:`APIError` (400) naming the first bad field.
    """
    if not isinstance(body, dict):
        raise bad(None, "the request body must be a JSON object", code="invalid_json")
    allowed = CHAT_FIELDS if kind == "chat" else COMPLETION_FIELDS
    for name in body:
        if name not in allowed:
            raise bad(name, f"unknown field {name!r}; supported fields: {sorted(allowed)}", code="unknown_field")
    for name, neutral in _NEUTRAL.items():
        if name in body and body[name] not in neutral:
            raise bad(name, f"{name}={body[name]!r} is not supported by Diffulex; leave it out "
                            f"(or set {neutral[0]!r})", code="unsupported_value")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad("model", "model must be a string")
    ext = body.get("diffulex") or {}
    if not isinstance(ext, dict):
        raise bad("diffulex", "diffulex must be an object, e.g. {\"stream_mode\": \"denoise\"}")
    for name in ext:
        if name not in DIFFULEX_FIELDS:
            raise bad(f"diffulex.{name}", f"unknown field diffulex.{name!r}; supported: {list(DIFFULEX_FIELDS)}",
                      code="unknown_field")
    mode = ext.get("stream_mode", body.get("stream_mode", "committed"))
    if mode not in STREAM_MODES:
        raise bad("stream_mode", f"stream_mode={mode!r} is invalid: allowed {list(STREAM_MODES)}")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise bad("stream", "stream must be true or false")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict) or any(k not in ("include_usage", "continuous_usage_stats") for k in opts):
        raise bad("stream_options", "stream_options must be an object with 'include_usage'")
    fields: dict[str, Any] = {}
    for name in _SAMPLING:
        if body.get(name) is not None:
            fields[name] = body[name]
    if kind == "chat" and body.get("max_completion_tokens") is not None:
        fields["max_tokens"] = body["max_completion_tokens"]
    if "stop" in fields and isinstance(fields["stop"], list):
        fields["stop"] = [s for s in fields["stop"] if s != ""] if all(isinstance(s, str) for s in fields["stop"]) \
            else fields["stop"]
    for name in ("ignore_eos", "max_nfe", "max_repetition_run"):
        v = ext.get(name, body.get(name) if name == "ignore_eos" else None)
        if v is not None:
            fields[name] = v
    try:
        sp = SamplingParams(**fields)
    except (ValueError, TypeError) as e:
        raise from_value_error(ValueError(str(e))) from None
    if kind == "chat":
        messages = _messages(body.get("messages"))
        if chat_template is None:
            raise bad("messages", "this model's tokenizer has no chat template; use /v1/completions with a plain "
                                  "prompt, or add a 'chat_template' to the checkpoint's tokenizer_config.json",
                      code="no_chat_template")
        prompts: list = [chat_template(messages)]
    else:
        if "prompt" not in body:
            raise bad("prompt", "prompt is required", code="missing_field")
        prompts = _prompts(body["prompt"])
    return GenerationRequest(kind=kind, prompts=prompts, sampling_params=sp, stream=stream, stream_mode=mode,
                             include_usage=bool(opts.get("include_usage")), model=model)


def usage(results: list[dict]) -> dict:
    """OpenAI usage plus the diffusion extensions ``nfe`` (forwards) and ``tpf`` (tokens per forward)."""
    prompt = sum(r["prompt_tokens"] for r in results)
    completion = sum(r["completion_tokens"] for r in results)
    nfe = sum(r["nfe"] for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "nfe": nfe, "tpf": completion / nfe if nfe else 0.0}


def choice(req: GenerationRequest, index: int, text: Optional[str], finish: Optional[str],
           extra: Optional[dict] = None, stream: bool = False, first: bool = False) -> dict:
    c: dict[str, Any] = {"index": index}
    if req.kind == "chat":
        if stream:
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            if text:
                delta["content"] = text
            c["delta"] = delta
        else:
            c["message"] = {"role": "assistant", "content": text}
    else:
        c["text"] = text or ""
        c["logprobs"] = None
    c["finish_reason"] = finish
    if extra:
        c["diffulex"] = extra
    return c


def envelope(req: GenerationRequest, model: str, choices: list[dict], stream: bool,
             usage_: Optional[dict] = None) -> dict:
    obj = ("chat.completion" if req.kind == "chat" else "text_completion")
    if stream and req.kind == "chat":
        obj = "chat.completion.chunk"
    out: dict[str, Any] = {"id": req.response_id, "object": obj, "created": req.created, "model": model,
                           "choices": choices}
    if usage_ is not None:
        out["usage"] = usage_
    return out
