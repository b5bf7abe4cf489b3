"""lm-evaluation-harness model ``diffulex``: lm-eval's ``generate_until`` through one Diffulex engine.

Importing this module registers :class:`DiffulexLM` in lm-eval's model registry as ``diffulex``
(lm-eval 0.4.13 discovers no third-party models by itself: run ``diffulex-lm-eval``, which
imports this module first, or import it before ``lm_eval.simple_evaluate(model="diffulex")``).

``model_args``: ``pretrained`` (a checkpoint directory, or an already-built engine from
``Diffulex(...)``) plus any keyword ``Diffulex(...)`` takes (``decoding_strategy``,
``accept_threshold``, ``block_size``, ``max_model_len``, ... see ``diffulex.config.aliases``);
a key that is neither is a ValueError. lm-eval's own ``batch_size`` (``N``: at most N requests
per ``generate`` call; ``auto`` or unset: all of them in one call, the engine batching them
continuously), ``max_batch_size``, ``device`` (``cpu``, ``cuda``, ``cuda:N``, ``auto``) and
``max_length`` (= ``max_model_len``) are mapped. ``loglikelihood`` and ``loglikelihood_rolling``
are refused (:data:`LOGLIKELIHOOD_REFUSAL`). See docs/evaluation.md.
"""

from __future__ import annotations

import atexit
import logging
import re
import weakref
from typing import Any, Optional, Sequence

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

log = logging.getLogger("diffulex.lm_eval")

MODEL_NAME = "diffulex"
# lm-eval's default generation budget (lm_eval.defaults.DEFAULT_MAX_GEN_TOKS) when a task sets none.
DEFAULT_MAX_GEN_TOKS = 256
# The gen_kwargs a request may carry; anything else is refused before any generation starts.
MAX_TOKEN_KEYS = ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens")
GEN_KWARGS = ("until", *MAX_TOKEN_KEYS, "temperature", "do_sample", "top_p", "top_k", "seed")
# model_args that belong to lm-eval (it passes batch_size / max_batch_size / device itself).
LM_EVAL_ARGS = ("pretrained", "batch_size", "max_batch_size", "device", "max_length", "trust_remote_code")

LOGLIKELIHOOD_REFUSAL = (
    "the diffulex lm-eval model does not implement {method}: a diffusion language model has no "
    "left-to-right likelihood, and the Monte-Carlo masked estimate (as in LLaDA's evaluation) is not "
    "implemented here. Use generate_until tasks instead (e.g. gsm8k, or the bundled diffulex_* tasks: "
    "diffulex_add2, ..., group diffulex_arith), or score likelihood tasks with lm-eval's `hf` model "
    "(--model hf --model_args pretrained=...,trust_remote_code=True) using the model's official "
    "likelihood code.")


def _refuse(method: str) -> NotImplementedError:
    return NotImplementedError(LOGLIKELIHOOD_REFUSAL.format(method=method))


def _batch_size(value: Any, name: str) -> Optional[int]:
    """None for 'all requests in one call' (None, 'auto', 'auto:N'); else an int >= 1."""
    if value is None or (isinstance(value, str) and (value.strip().lower() == "auto"
                                                     or value.strip().lower().startswith("auto:"))):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"diffulex lm-eval model: {name}={value!r}; expected an int >= 1 or 'auto'")
    return value


def _device_kwargs(device: Any, engine_kwargs: dict[str, Any]) -> dict[str, Any]:
    """lm-eval's ``device`` as Diffulex keywords (``device``, and ``device_ids`` for ``cuda:N``)."""
    if device is None:
        return {}
    d = str(device).strip().lower()
    if d in ("", "auto"):
        return {}
    if d in ("cpu", "cuda"):
        return {"device": d}
    m = re.fullmatch(r"cuda:(\d+)", d)
    if m is None:
        raise ValueError(f"diffulex lm-eval model: device={device!r} is not supported; use cpu, cuda, cuda:N "
                         "or auto (set several GPUs with model_args device_ids=[...] and tensor_parallel_size)")
    index = int(m.group(1))
    if index == 0 or "device_ids" in engine_kwargs:
        return {"device": "cuda"}
    return {"device": "cuda", "device_ids": [index]}


def _engine_kwargs(extra: dict[str, Any]) -> dict[str, Any]:
    """The model_args for ``Diffulex(...)``: config keywords only (None values: Diffulex's default)."""
    from diffulex.config.aliases import is_config_key, near_miss

    unknown = sorted(k for k in extra if not is_config_key(k))
    if unknown:
        hints = []
        for k in unknown:
            guess = near_miss(k, LM_EVAL_ARGS)
            hints.append(f"{k!r}" + (f" (did you mean {guess!r}?)" if guess else ""))
        raise ValueError(f"diffulex lm-eval model: unknown model_args {', '.join(hints)}; model_args take "
                         f"lm-eval's {list(LM_EVAL_ARGS)} and the Diffulex(...) keywords of "
                         "diffulex.config.aliases (decoding_strategy, accept_threshold, block_size, "
                         "max_model_len, ...)")
    return {k: v for k, v in extra.items() if v is not None}


@register_model(MODEL_NAME)
class DiffulexLM(LM):
    """lm-eval model over one Diffulex engine (built here, or ``pretrained=`` an engine you built)."""

    def __init__(self, pretrained: Any = None, batch_size: Any = None, max_batch_size: Any = None,
                 device: Any = None, max_length: Any = None, trust_remote_code: Any = None,
                 **engine_kwargs: Any) -> None:
        super().__init__()
        from diffulex.engine.engine import DiffulexEngine

        self.batch_size = _batch_size(batch_size, "batch_size")
        self.max_batch_size = _batch_size(max_batch_size, "max_batch_size")
        if isinstance(pretrained, DiffulexEngine):
            if engine_kwargs or max_length is not None or trust_remote_code is not None:
                raise ValueError("diffulex lm-eval model: pretrained= is an engine already; pass its options to "
                                 f"Diffulex(...), not to the lm-eval model ({sorted(engine_kwargs)})")
            self.llm, self._owns_engine = pretrained, False
            self.pretrained = str(pretrained.config.model.path)
            return
        if pretrained is None or (isinstance(pretrained, str) and not pretrained.strip()):
            raise ValueError("diffulex lm-eval model: model_args needs pretrained=<checkpoint directory>, e.g. "
                             "--model_args pretrained=/path/to/ckpt,decoding_strategy=multi_bd")
        kwargs = _engine_kwargs(engine_kwargs)
        if trust_remote_code is not None:  # lm-eval's own flag, the engine's model.trust_remote_code
            kwargs["trust_remote_code"] = bool(trust_remote_code)
        if max_length is not None:
            if "max_model_len" in kwargs:
                raise ValueError("diffulex lm-eval model: give max_length or max_model_len, not both")
            kwargs["max_model_len"] = max_length
        kwargs.update(_device_kwargs(device, kwargs))
        from diffulex import Diffulex

        self.pretrained = str(pretrained)
        self.engine_kwargs = kwargs
        self.llm, self._owns_engine = Diffulex(self.pretrained, **kwargs), True
        # lm-eval never closes the models it builds: shut the engine (and any worker processes) down
        # at interpreter exit, while the modules it needs still exist.
        atexit.register(_close_at_exit, weakref.ref(self))

    # -- facts lm-eval reads ------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        return self.llm.tokenizer

    @property
    def max_model_len(self) -> int:
        return int(self.llm.config.max_model_len)

    @property
    def tokenizer_name(self) -> str:
        return self.pretrained.replace("/", "__")

    def get_model_info(self) -> dict[str, Any]:
        """Merged into lm-eval's results["config"]."""
        import diffulex

        config = self.llm.config
        return {"diffulex_version": diffulex.__version__, "model_path": self.pretrained,
                "decoding_strategy": config.strategy.name.value, "max_model_len": self.max_model_len,
                "block_size": getattr(config.strategy, "block_size", None)}

    def chat_template(self, chat_template: bool | str = False) -> Optional[str]:
        return getattr(self.tokenizer, "chat_template", None) or ""

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The tokenizer's own chat template (``--apply_chat_template``)."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"diffulex lm-eval model: the tokenizer of {self.pretrained} has no chat template; "
                             "run without --apply_chat_template")
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt,
                                                  continue_final_message=not add_generation_prompt)

    # -- requests -----------------------------------------------------------------------
    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        raise _refuse("loglikelihood")

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        raise _refuse("loglikelihood_rolling")

    def room(self, prompt_len: int) -> int:
        """Most tokens a prompt of ``prompt_len`` tokens may generate: whole blocks under max_model_len.

        The engine's own bound (``DiffulexEngine.add_request``, which clamps silently).
        """
        block = int(getattr(self.llm.config.strategy, "block_size", 1) or 1)
        return (self.max_model_len // block) * block - prompt_len

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """One continuation per request, in request order; every request is checked before any runs.

        ``until``: stop strings (a str or a list; empty strings dropped; empty/None: stop at EOS or
        ``max_gen_toks``). ``max_gen_toks`` (or ``max_new_tokens`` / ``max_tokens``; default 256) above
        the prompt's room is clamped to it with one warning per call. ``do_sample=False`` (or unset
        with temperature 0) is greedy. Any other gen_kwargs key is a ValueError.
        """
        if not requests:
            return []
        plans = [self._plan(i, req) for i, req in enumerate(requests)]
        clamped = [(asked, sp.max_tokens) for _, sp, asked in plans if asked > sp.max_tokens]
        if clamped:
            log.warning("diffulex lm-eval model: max_gen_toks above the model's room (max_model_len=%d minus the "
                        "prompt, in whole blocks) for %d of %d request(s): asked up to %d, clamped to %d..%d "
                        "tokens; raise max_model_len in model_args if the model allows", self.max_model_len,
                        len(clamped), len(plans), max(a for a, _ in clamped), min(g for _, g in clamped),
                        max(g for _, g in clamped))
        size = self.batch_size or self.max_batch_size or len(plans)
        texts: list[str] = []
        for start in range(0, len(plans), size):
            chunk = plans[start:start + size]
            out = self.llm.generate([p for p, _, _ in chunk], [sp for _, sp, _ in chunk],
                                    use_tqdm=not disable_tqdm)
            texts += [t.text for t in out.trajectories]
        for req, text in zip(requests, texts):
            self.cache_hook.add_partial("generate_until", req.args, text)
        return texts

    def _plan(self, index: int, req: Any) -> tuple[str, Any, int]:
        """(prompt, SamplingParams, asked max_gen_toks) of one request; ValueError naming it when bad."""
        from lm_eval.models.utils import normalize_gen_kwargs

        from diffulex import SamplingParams

        where = f"generate_until request #{index}"
        if getattr(req, "task_name", None) is not None:
            where += f" (task {req.task_name}, doc {getattr(req, 'doc_id', None)})"
        args = req.args if hasattr(req, "args") else req
        if not isinstance(args, Sequence) or len(args) != 2:
            raise ValueError(f"diffulex lm-eval model: {where}: expected (context, gen_kwargs), got {args!r}")
        context, gen_kwargs = args
        if not isinstance(context, str):
            raise ValueError(f"diffulex lm-eval model: {where}: the context must be a str, got "
                             f"{type(context).__name__}")
        gen_kwargs = dict(gen_kwargs or {})
        unknown = sorted(k for k in gen_kwargs if k not in GEN_KWARGS)
        if unknown:
            raise ValueError(f"diffulex lm-eval model: {where}: unsupported gen_kwargs {unknown}; the diffulex "
                             f"model takes {list(GEN_KWARGS)} (remove the others from the task's "
                             "generation_kwargs or --gen_kwargs)")
        until = _stop_strings(gen_kwargs.pop("until", None), where)
        try:
            g = normalize_gen_kwargs({k: v for k, v in gen_kwargs.items() if v is not None},
                                     default_max_gen_toks=DEFAULT_MAX_GEN_TOKS)
        except (TypeError, ValueError) as e:
            raise ValueError(f"diffulex lm-eval model: {where}: gen_kwargs {args[1]!r}: {e}") from e
        asked = g["max_gen_toks"]
        if asked < 1:
            raise ValueError(f"diffulex lm-eval model: {where}: max_gen_toks={asked}; expected an int >= 1")
        ids = self.tokenizer.encode(context, add_special_tokens=False)
        if not ids:
            raise ValueError(f"diffulex lm-eval model: {where}: the context is empty (0 tokens); a diffusion "
                             "model needs a prompt")
        room = self.room(len(ids))
        if room < 1:
            raise ValueError(f"diffulex lm-eval model: {where}: the prompt has {len(ids)} tokens, which leaves "
                             f"no whole block under max_model_len={self.max_model_len}; raise max_model_len in "
                             "model_args (up to the model's maximum) or shorten the prompt (fewer shots)")
        fields: dict[str, Any] = {"temperature": float(g.get("temperature", 0.0)), "max_tokens": min(asked, room),
                                  "stop": until}
        if g.get("top_p") is not None:
            fields["top_p"] = float(g["top_p"])
        if g.get("top_k") is not None:
            fields["top_k"] = g["top_k"]
        if g.get("seed") is not None:
            fields["seed"] = g["seed"]
        try:
            sp = SamplingParams(**fields)
        except ValueError as e:
            raise ValueError(f"diffulex lm-eval model: {where}: gen_kwargs {args[1]!r}: {e}") from e
        return context, sp, asked

    # -- lifetime -----------------------------------------------------------------------
    def close(self) -> None:
        """Shut the engine down when this model built it (an engine passed as pretrained= stays open)."""
        llm = getattr(self, "llm", None)
        if llm is not None and getattr(self, "_owns_engine", False):
            llm.exit()

    def __enter__(self) -> "DiffulexLM":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _close_at_exit(ref: "weakref.ref[DiffulexLM]") -> None:
    model = ref()
    if model is not None:
        model.close()


def _stop_strings(until: Any, where: str) -> list[str]:
    if until is None:
        return []
    if isinstance(until, str):
        until = [until]
    if not isinstance(until, (list, tuple)) or not all(isinstance(s, str) for s in until):
        raise ValueError(f"diffulex lm-eval model: {where}: until={until!r}; expected a str or a list of str")
    return [s for s in until if s]  # lm-eval itself ignores '' stop strings
