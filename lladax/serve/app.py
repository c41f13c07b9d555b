"""The HTTP routes: `create_app(engine)`, a FastAPI app over an `Engine` (lladax.serve.engine).

POST /v1/completions, POST /v1/chat/completions (OpenAI's bodies, `lladax.serve.protocol`),
GET /v1/models, GET /health, GET /metrics (Prometheus text), and the live page's routes from
`lladax.serve.live.routes(engine)` when that module exists. Every refusal is OpenAI's error body
with a 4xx (503 + Retry-After when the queue is full); the server keeps serving.

Streaming (`stream: true`): server-sent events in OpenAI's chunk format. The sampler decodes a
row in ONE jitted call, so a row's text is sent when the row is final: chat streams send the
role chunk at once, then each choice's text as one chunk when its batch returns, its finish
chunk, and `data: [DONE]`. A client that leaves before that drops its rows that have not run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from lladax.serve import protocol
from lladax.serve.engine import Engine
from lladax.serve.errors import RequestError, error_body

log = logging.getLogger("lladax.serve")


def _live_routes(engine: Engine) -> list[Any]:
    """VW's live page (`lladax.serve.live.routes`), or none while that module does not exist."""
    try:
        from lladax.serve import live
    except ModuleNotFoundError as e:
        if e.name != "lladax.serve.live":
            raise
        return []
    return list(live.routes(engine))


def create_app(engine: Engine, *, live: bool = True) -> FastAPI:
    """The app serving `engine`; its lifespan starts the engine's worker and drains it at exit
    (in-flight and queued rows finish)."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            await asyncio.to_thread(engine.close)

    app = FastAPI(title="lladax", lifespan=lifespan, docs_url=None, redoc_url=None)
    metrics = engine.metrics

    def answer(endpoint: str, response: Response) -> Response:
        return _counted(engine, endpoint, response)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> Response:
        body = error_body(f"{e.detail}: {request.method} {request.url.path}", e.status_code)
        return answer("other", JSONResponse(body, e.status_code))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError) -> Response:
        return answer("other", JSONResponse(error_body(str(e.errors()[:1]), 422), 422))

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _generate(engine, request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _generate(engine, request, chat=True)

    @app.get("/v1/models")
    async def models() -> Response:
        card = {"id": engine.model_id, "object": "model", "created": 0, "owned_by": "lladax"}
        return answer("models", JSONResponse({"object": "list", "data": [card]}))

    @app.get("/health")
    async def health() -> Response:
        return answer("health", JSONResponse({"status": "ok", "model": engine.model_id}))

    @app.get("/metrics")
    async def prometheus() -> Response:
        text = metrics.render()
        return answer("metrics", PlainTextResponse(text, media_type="text/plain; version=0.0.4"))

    if live:
        app.router.routes.extend(_live_routes(engine))
    return app


def _counted(engine: Engine, endpoint: str, response: Response) -> Response:
    engine.metrics.add("lladax_requests_total", endpoint=endpoint, status=response.status_code)
    return response


async def _generate(engine: Engine, request: Request, chat: bool) -> Response:
    """A completions / chat request: parse, queue every choice, answer (JSON or SSE)."""
    endpoint = "chat" if chat else "completions"
    try:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RequestError(f"the body is not valid JSON ({e}): send a JSON object") from None
        parsed = protocol.parse(engine, body, chat=chat)
        tickets = []
        try:
            for job in parsed.jobs:
                tickets.append(engine.submit(job))
        except RequestError:
            for t in tickets:
                t.cancel()
            raise
    except RequestError as e:
        headers = {"Retry-After": str(e.retry_after)} if e.retry_after else None
        return _counted(engine, endpoint, JSONResponse(e.body(), e.status, headers=headers))
    if parsed.stream:
        stream = _events(parsed, tickets, engine)
        return _counted(engine, endpoint, StreamingResponse(stream, media_type="text/event-stream"))
    try:
        results = await asyncio.gather(*(t.wait() for t in tickets))
    except Exception as e:  # the sampler failed on this batch: a 500, the worker lives on
        log.exception("generation failed")
        body = error_body(f"generation failed: {e}", 500)
        return _counted(engine, endpoint, JSONResponse(body, 500))
    return _counted(engine, endpoint, JSONResponse(protocol.response(parsed, results)))


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj)}\n\n"


async def _events(parsed: protocol.ParsedRequest, tickets: list, engine: Engine):
    """The SSE stream of one request (see the module docstring)."""
    finished = False
    try:
        if parsed.chat:
            for i in range(len(tickets)):
                yield _sse(protocol.chunk(parsed, i, role=True))

        async def indexed(i: int) -> tuple[int, Any]:
            return i, await tickets[i].wait()

        for done in asyncio.as_completed([indexed(i) for i in range(len(tickets))]):
            i, result = await done
            yield _sse(protocol.chunk(parsed, i, text=result.text))
            yield _sse(protocol.chunk(parsed, i, finish_reason=result.finish_reason))
        yield "data: [DONE]\n\n"
        finished = True
    except Exception as e:
        log.exception("generation failed")
        yield _sse(error_body(f"generation failed: {e}", 500))
        finished = True
    finally:
        if not finished:
            for t in tickets:
                t.cancel()
            engine.metrics.add("lladax_stream_disconnects_total")


__all__ = ["create_app"]
