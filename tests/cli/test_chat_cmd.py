"""`lladax chat` with a block-diffusion checkpoint (`lladax.cli.chat_cmd`): the turns run the
kind's own sampler through `cli.common.generate`."""

from __future__ import annotations

import io

import jax

from lladax import config
from lladax.cli import chat_cmd, main
from lladax.model import transformer


def test_chat_with_a_block_diffusion_model(tok, monkeypatch, capsys):
    bd = config.preset("tiny", kind="block_diffusion", block_size=4)
    params = transformer.init_params(bd, jax.random.key(0))
    monkeypatch.setattr(chat_cmd, "check_model_path", lambda *a: None)
    monkeypatch.setattr(chat_cmd, "load_model", lambda *a: (bd, params, tok))
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n/quit\n"))
    assert main(["chat", "--checkpoint", "bd", "--gen-length", "4"]) == 0
    assert capsys.readouterr().out.count("assistant> ") == 1
