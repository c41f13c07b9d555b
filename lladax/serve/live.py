"""The live view: `GET /`, a chat page that draws each reply as the sampler's canvas, step by step.

`routes(engine)` gives the page (`GET /`), its assets (`GET /static/{name}`: the files of
`lladax/serve/static/`, shipped in the wheel: no build step, no CDN) and its feed,
`POST /v1/canvas`: a chat completions body (`messages`, `max_tokens`, `seed`, `stop`, the
`SamplerConfig` options as extra fields; `protocol.parse` checks it) answered with server-sent
events::

    data: {"note": "..."}                              (only when the sampler keeps no history)
    data: {"step": 3, "steps": 32, "canvas": ["The", null, ...], "done": false}   (per step)
    data: {"text": "...", "finish_reason": "stop", "steps": 32}
    data: [DONE]

`canvas` has one entry per generated position: the token's text (one id decoded alone), null
for a mask, "" for the EOS/EoT padding after the answer. LLaDA's exact sampler keeps every
step's canvas (`Engine.canvas_steps`: one jitted run, `return_history=True`); its steps are
replayed at a watchable pace (`Replay`). Fast decoding, block diffusion and the autoregressive
baseline keep no history: one final canvas, with a note saying so. A refused request (bad JSON,
bad option, over the context, queue full) is an HTTP 4xx/503 with OpenAI's error body, before
any event; a failure after the first event is an `{"error": ...}` event.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.resources
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from lladax.diffusion.sampling import decode_answer
from lladax.serve import protocol
from lladax.serve.errors import RequestError, error_body
from lladax.serve.scheduler import Generation

log = logging.getLogger("lladax.serve")
STATIC = importlib.resources.files("lladax.serve").joinpath("static")
MEDIA_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
NO_HISTORY = (
    "this sampler ({what}) keeps no per-step canvas: showing the final canvas only; LLaDA's "
    "exact sampler (no cache / threshold options) streams every step"
)


@dataclasses.dataclass(frozen=True)
class Replay:
    """How fast recorded steps are sent: at most one per `step_s` seconds, the whole reply in at
    most `total_s` (long runs step faster). Steps that arrive slower are sent as they come."""

    step_s: float = 0.04
    total_s: float = 3.0

    def interval(self, steps: int) -> float:
        return min(self.step_s, self.total_s / max(steps, 1))


def routes(engine: Any, replay: Replay = Replay()) -> list[Route]:
    """The live view's routes over an `Engine`: `GET /`, `GET /static/{name}`, `POST /v1/canvas`."""

    async def page(request: Request) -> Response:
        return asset_response("index.html")

    async def static(request: Request) -> Response:
        return asset_response(request.path_params["name"])

    async def canvas(request: Request) -> Response:
        try:
            job = parse_request(engine, await read_body(request))
            steps = engine.canvas_steps(job.prompt, job.sampler, seed=job.seed)
            first = await asyncio.to_thread(next, steps)  # refusals (503, ...) come as HTTP here
        except RequestError as e:
            response: Response = error_response(e)
        except Exception as e:  # the sampler failed: a 500, the server lives on
            log.exception("canvas generation failed")
            body = error_body(f"generation failed: {type(e).__name__}: {e}", 500)
            response = JSONResponse(body, status_code=500)
        else:
            events = canvas_events(engine, job, first, steps, replay)
            response = StreamingResponse(
                events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )
        engine.metrics.add("lladax_requests_total", endpoint="canvas", status=response.status_code)
        return response

    return [
        Route("/", page, methods=["GET"]),
        Route("/static/{name}", static, methods=["GET"]),
        Route("/v1/canvas", canvas, methods=["POST"]),
    ]


def asset_response(name: str) -> Response:
    """A file of `lladax/serve/static/` (no subfolders, known types only), else 404."""
    suffix = name[name.rfind(".") :] if "." in name else ""
    asset = STATIC.joinpath(name)
    if "/" in name or suffix not in MEDIA_TYPES or not asset.is_file():
        return JSONResponse(error_body(f"no page asset {name!r}", 404), status_code=404)
    return Response(
        asset.read_bytes(),
        media_type=MEDIA_TYPES[suffix],
        headers={"Cache-Control": "no-cache"},
    )


def error_response(e: RequestError) -> JSONResponse:
    headers = {} if e.retry_after is None else {"Retry-After": str(e.retry_after)}
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


async def read_body(request: Request) -> Any:
    """The JSON of a request body (RequestError 400 when it is not JSON)."""
    try:
        return json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(f"the body is not valid JSON ({e}): send a JSON object") from None


def parse_request(engine: Any, body: Any) -> Generation:
    """A canvas request is a chat completions body (`protocol.parse`: the same fields, checks
    and errors) asking for one reply."""
    jobs = protocol.parse(engine, body, chat=True).jobs
    if len(jobs) > 1:
        raise RequestError(f"n={len(jobs)}: the live view draws one reply: pass n=1", "n")
    return jobs[0]


def canvas_cells(engine: Any, tokens: tuple[int, ...], final: bool) -> list[str | None]:
    """One canvas [gen_length] for the page: text per token, None per mask, "" for EOS/EoT. On
    the final canvas the masks after the first EOS/EoT are padding too (early exit leaves a
    finished row's tail masked: the returned canvas holds EOS there)."""
    ends = {engine.cfg.eos_token_id, engine.cfg.eot_token_id}
    pieces = engine.pieces(tokens)
    cells = ["" if t in ends else piece for t, piece in zip(tokens, pieces, strict=True)]
    if final and "" in cells:
        end = cells.index("")
        cells[end:] = ["" if c is None else c for c in cells[end:]]
    return cells


def history_note(engine: Any, sampler: Any) -> str | None:
    """Why a reply shows only its final canvas (None: every step is shown)."""
    cfg = engine.cfg
    if cfg.causal:
        return NO_HISTORY.format(what="the autoregressive baseline")
    if cfg.kind == "block_diffusion":
        return NO_HISTORY.format(what="block diffusion")
    if sampler.fast:
        return NO_HISTORY.format(what=f"fast decoding, cache={sampler.cache!r}")
    return None


def sse(payload: Any) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


async def canvas_events(
    engine: Any, job: Generation, first: Any, steps: Iterator[Any], replay: Replay
) -> AsyncIterator[str]:
    """The SSE stream of one reply: the all-mask canvas (step 0), the steps from `first` on,
    paced by `replay`, then the final text (`Engine.finish`: cut at EOS/EoT, max_tokens and
    stop) and [DONE]. A failure midway ends the stream with an error event."""
    note = history_note(engine, job.sampler)
    if note:
        yield sse({"note": note})
    blank = [None] * job.sampler.gen_length
    yield sse({"step": 0, "steps": first.steps, "canvas": blank, "done": False})
    interval, step, sent = replay.interval(first.steps), first, time.monotonic()
    try:
        while True:
            wait = sent + interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            sent = time.monotonic()
            cells = canvas_cells(engine, step.tokens, step.final)
            yield sse({"step": step.step, "steps": step.steps, "canvas": cells, "done": step.final})
            following = None if step.final else await asyncio.to_thread(next, steps, None)
            if following is None:
                break
            step = following
        answer = decode_answer(step.tokens, 0, engine.cfg)
        result = engine.finish(job, answer)
    except RequestError as e:
        yield sse(e.body())
        return
    except Exception as e:  # the run failed after the stream began: say so, end the stream
        yield sse(error_body(f"generation failed: {type(e).__name__}: {e}", 500))
        return
    yield sse({"text": result.text, "finish_reason": result.finish_reason, "steps": step.steps})
    yield sse("[DONE]")


__all__ = ["Replay", "routes"]
