"""`lladax serve`: an OpenAI-compatible HTTP server over the samplers, batching concurrent requests.

    lladax serve --checkpoint runs/small [--host 127.0.0.1 --port 8000 --max-batch 8 --warmup]
    curl http://127.0.0.1:8000/v1/completions -d '{"prompt": "The list type", "max_tokens": 32}'

Endpoints: POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health,
GET /metrics. The sampler flags are the server's defaults; a request overrides any of them as an
extra body field (`"steps": 32`). SIGTERM drains: in-flight requests finish, then exit 0.
Needs the serve extra (uv sync --extra serve). docs/serving.md has the details.
"""

from __future__ import annotations

import argparse
import importlib.util

from lladax.cli import common
from lladax.store.loading import check_model_path


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = common.command_parser(
        sub, name, "serve a model over an OpenAI-compatible HTTP API", __doc__
    )
    common.add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=8, help="most rows in one sampler call")
    p.add_argument("--max-queue", type=int, default=256, help="rows waiting before 503s")
    p.add_argument(
        "--warmup",
        action="store_true",
        help="compile the default sampler's programs (prompt bucket 16 and 32, every batch "
        "size) before accepting requests; otherwise each shape compiles on first use (logged)",
    )
    p.add_argument("--model-id", default=None, help="the name /v1/models lists (default: dir)")
    common.add_sampling_args(p)
    common.add_fast_args(p)


def _check(args: argparse.Namespace) -> None:
    if not 1 <= args.max_batch <= 1024:
        raise ValueError(f"--max-batch {args.max_batch} must be in [1, 1024]")
    if not args.max_queue >= 1:
        raise ValueError(f"--max-queue {args.max_queue} must be >= 1")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port {args.port} must be in [0, 65535]")
    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(
            f"{' and '.join(missing)} not installed: install the serve extra: uv sync --extra serve"
        )


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    sampler = common.sampler_config_from_args(args)  # before anything slow
    _check(args)
    check_model_path(args.checkpoint, args.tokenizer)
    import logging

    from lladax.serve.engine import Engine
    from lladax.serve.server import build_server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    engine = Engine.load(
        args.checkpoint,
        sampler,
        dtype=args.dtype,
        tokenizer=args.tokenizer,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        seed=args.seed,
        **({"model_id": args.model_id} if args.model_id else {}),
    )
    if args.warmup:
        engine.warmup((16, 32))
    build_server(engine, args.host, args.port).run()
    return 0
