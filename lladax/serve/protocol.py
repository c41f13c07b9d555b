"""OpenAI's request and response shapes: a completions / chat body -> checked `Generation`s, and
results -> response objects and stream chunks.

Body fields: `model` (the served one, or absent), `prompt` (completions) or `messages` (chat),
`max_tokens` (alias `max_completion_tokens`; cuts the answer, default gen_length; above the
server's gen_length it grows the canvas, unless the request sets gen_length), `temperature`,
`stop` (a string or up to 4), `seed`, `n` (1..16), `stream`; any `SamplerConfig` option
(`gen_length`, `steps`, `block_length`, `remasking`, `cfg_scale`, `cache`, `threshold`, `factor`,
`early_exit`, ...) as an extra field (the openai client's `extra_body`), defaults the server's
flags; OpenAI fields with no meaning here (`top_p`, `user`, penalties, ...) are accepted and
ignored; anything else is refused naming the field. A null value means the default.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any

from lladax.diffusion.sampler_config import SamplerConfig
from lladax.serve.errors import RequestError
from lladax.serve.scheduler import Generation, Result

MAX_N = 16
IGNORED = frozenset(
    {
        "top_p",
        "user",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "stream_options",
        "store",
        "metadata",
        "parallel_tool_calls",
        "service_tier",
        "echo",
        "best_of",
        "suffix",
    }
)
OPENAI = frozenset({"model", "max_tokens", "max_completion_tokens", "stop", "seed", "n", "stream"})


@dataclasses.dataclass(frozen=True)
class ParsedRequest:
    """A checked body: one `Generation` per choice (n), and how to answer."""

    jobs: list[Generation]
    stream: bool
    chat: bool
    model: str
    prompt_tokens: int
    id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex[:24])
    created: int = dataclasses.field(default_factory=lambda: int(time.time()))


def _int(body: dict, name: str, low: int, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise RequestError(f"{name}={value!r} must be an integer >= {low}", name)
    if high is not None and value > high:
        raise RequestError(f"{name}={value!r} must be <= {high}", name)
    return value


def _stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) or len(stops) > 4:
        raise RequestError(f"stop={stop!r} must be a string or a list of up to 4 strings", "stop")
    return tuple(stops)


def _sampler(engine: Any, options: dict[str, Any], max_tokens: int | None) -> SamplerConfig:
    """The request's sampler; a max_tokens above the server's gen_length (and no gen_length
    given) grows the canvas to max_tokens."""
    if max_tokens is None or "gen_length" in options or max_tokens <= engine.sampler.gen_length:
        return engine.sampler_for(options)
    try:
        return engine.sampler_for({**options, "gen_length": max_tokens})
    except RequestError as e:
        raise RequestError(
            f"max_tokens={max_tokens} grows the canvas to gen_length={max_tokens}, but "
            f"{e.message}; or pass max_tokens <= {engine.sampler.gen_length}",
            "max_tokens",
        ) from None


def parse(engine: Any, body: Any, *, chat: bool) -> ParsedRequest:
    """A completions (chat=False) or chat completions body -> `ParsedRequest` (RequestError on
    any bad field, before any work is queued)."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    body = {k: v for k, v in body.items() if v is not None}  # null: the default, as OpenAI's
    text_field = "messages" if chat else "prompt"
    options = set(SamplerConfig.options())
    unknown = sorted(set(body) - options - OPENAI - IGNORED - {text_field})
    if unknown:
        raise RequestError(
            f"unknown field {unknown[0]!r}: use OpenAI's fields or sampler options "
            f"({', '.join(sorted(options))})",
            unknown[0],
        )
    model = body.get("model")
    if model is not None and model != engine.model_id:
        raise RequestError(
            f"model {model!r} is not served here: use {engine.model_id!r} (GET /v1/models)",
            "model",
            status=404,
            code="model_not_found",
        )
    if text_field not in body:
        raise RequestError(f"missing field {text_field!r}", text_field)
    prompt = engine.chat_prompt(body["messages"]) if chat else engine.text_prompt(body["prompt"])
    max_tokens = _int(body, "max_tokens", 1)
    if max_tokens is None:
        max_tokens = _int(body, "max_completion_tokens", 1)
    n = _int(body, "n", 1, MAX_N) or 1
    seed = _int(body, "seed", 0, 2**63 - 1)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(f"stream={stream!r} must be true or false", "stream")
    sampler = _sampler(engine, {k: body[k] for k in options if k in body}, max_tokens)
    jobs = [
        engine.request(
            prompt,
            sampler,
            seed=None if seed is None else seed + i,
            max_tokens=max_tokens,
            stop=_stop(body),
        )
        for i in range(n)
    ]
    return ParsedRequest(jobs, stream, chat, engine.model_id, len(prompt))


def _object(req: ParsedRequest, chunk: bool) -> dict[str, Any]:
    kind = "chat.completion" if req.chat else "text_completion"
    return {
        "id": ("chatcmpl-" if req.chat else "cmpl-") + req.id,
        "object": kind + (".chunk" if chunk and req.chat else ""),
        "created": req.created,
        "model": req.model,
    }


def response(req: ParsedRequest, results: list[Result]) -> dict[str, Any]:
    """The non-streaming answer: one choice per result, usage counted in tokens."""
    choices = []
    for i, r in enumerate(results):
        choice: dict[str, Any] = {"index": i, "finish_reason": r.finish_reason, "logprobs": None}
        if req.chat:
            choice["message"] = {"role": "assistant", "content": r.text}
        else:
            choice["text"] = r.text
        choices.append(choice)
    completion = sum(len(r.token_ids) for r in results)
    usage = {
        "prompt_tokens": req.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": req.prompt_tokens + completion,
    }
    return {**_object(req, False), "choices": choices, "usage": usage}


def chunk(
    req: ParsedRequest,
    index: int,
    *,
    text: str | None = None,
    role: bool = False,
    finish_reason: str | None = None,
) -> dict[str, Any]:
    """One stream chunk: the role (chat's first), a piece of text, or the finish reason."""
    choice: dict[str, Any] = {"index": index, "finish_reason": finish_reason, "logprobs": None}
    if req.chat:
        delta: dict[str, Any] = {"role": "assistant"} if role else {}
        if text is not None:
            delta["content"] = text
        choice["delta"] = delta
    else:
        choice["text"] = text or ""
    return {**_object(req, True), "choices": [choice]}


__all__ = ["ParsedRequest", "chunk", "parse", "response"]
