"""Shared by the serve tests: a tiny random-init model saved as an HF directory with the default
tokenizer, and a live server on 127.0.0.1 (a free port) run in a thread of the test process."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from lladax.config import preset
from lladax.diffusion import sampling
from lladax.diffusion.sampler_config import SamplerConfig
from lladax.model.transformer import init_params
from lladax.store.convert import save_hf

# Short greedy answers: 16 tokens in 16 steps, two blocks of 8 (few compiled shapes, fast)
SAMPLER = SamplerConfig(gen_length=16, steps=16, block_length=8)


def tiny_model_dir(root: Path, tok: Any, kind: str = "diffusion") -> Path:
    """A random-init `tiny` model of `kind` (+ the tokenizer) as an HF directory under root."""
    path = root / f"tiny_{kind}"
    if not (path / "config.json").exists():
        extra = {"block_size": 8} if kind == "block_diffusion" else {}
        cfg = preset("tiny", kind=kind, **extra)
        save_hf(path, cfg, init_params(cfg, jax.random.key(0)))
        shutil.copy(tok.name, path / "tokenizer.model")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """`lladax.serve` on 127.0.0.1 in a thread: `with LiveServer(engine) as server: server.url`."""

    def __init__(self, engine: Any) -> None:
        from lladax.serve.server import build_server

        self.engine, self.port = engine, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = build_server(engine, "127.0.0.1", self.port, log_level="warning")
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def expected_answer(engine: Any, prompt: list[int], sampler: SamplerConfig = SAMPLER) -> str:
    """`sampling.generate_with` on the prompt alone (unpadded, batch 1), decoded as the server
    decodes it."""
    canvas = sampling.generate_with(
        engine.params, engine.cfg, np.asarray([prompt], np.int32), None, sampler
    )
    answer = sampling.decode_answer(np.asarray(canvas)[0], len(prompt), engine.cfg)
    return engine.tokenizer.decode(answer, skip_special=True).strip()
