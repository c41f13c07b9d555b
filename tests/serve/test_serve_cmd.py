"""`lladax serve`: refusals before any load (exit 2, one line), and a real subprocess server that
drains on SIGTERM (the request in flight is answered, exit 0)."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests
from serve_fixtures import free_port, tiny_model_dir


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--checkpoint", "/nonexistent/run"], "checkpoint /nonexistent/run does not exist"),
        (["--checkpoint", ".", "--max-batch", "0"], "--max-batch 0 must be in [1, 1024]"),
        (["--checkpoint", ".", "--steps", "0"], "--steps 0 must be >= 1"),
        (["--checkpoint", ".", "--port", "70000"], "--port 70000 must be in [0, 65535]"),
    ],
)
def test_refusals_before_loading(cli_error, argv, message):
    assert message in cli_error(["serve", *argv])


def test_missing_serve_extra_is_one_line(cli_error, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "uvicorn" else real(n, *a)
    )
    line = cli_error(["serve", "--checkpoint", "."])
    assert line.endswith("install the serve extra: uv sync --extra serve")


def test_sigterm_drains_and_exits_zero(tmp_path_factory, tok):
    path = tiny_model_dir(tmp_path_factory.mktemp("drain"), tok)
    port = free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    argv = [sys.executable, "-m", "lladax.cli", "serve", "--checkpoint", str(path)]
    argv += ["--port", str(port), "--gen-length", "16", "--block-length", "8"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            try:
                if requests.get(url + "/health", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.2)
        answers = []
        body = {"prompt": "The list type", "gen_length": 96, "steps": 96, "block_length": 8}
        asker = threading.Thread(
            target=lambda: answers.append(requests.post(url + "/v1/completions", json=body))
        )
        asker.start()  # its first call compiles: still in flight when SIGTERM arrives
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        asker.join(120)
        out = proc.communicate(timeout=60)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert answers and answers[0].status_code == 200, out
    assert "Waiting for connections to close" in out, out  # it was in flight at SIGTERM
    assert answers[0].json()["choices"][0]["finish_reason"] in ("stop", "length")
