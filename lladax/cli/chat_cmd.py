"""`lladax chat`: multi-turn chat with the LLaDA chat template and the reference's turn handling.

After each reply every EOS is removed from the canvas and the rest (prompt + reply) is kept as the
conversation so far; the next user turn is appended without its BOS (as upstream chat.py does).
Commands: /reset clears the history, /quit (or end of input) exits.
"""

from __future__ import annotations

import argparse

from lladax.cli import common
from lladax.diffusion.sampler_config import SamplerConfig
from lladax.store.loading import check_model_path, load_model


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = common.command_parser(sub, name, "interactive multi-turn chat", __doc__)
    common.add_model_args(p)
    common.add_sampling_args(p, SamplerConfig(gen_length=128))  # chat replies run longer


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    sampler = common.sampler_config_from_args(args)  # before anything slow: a typo costs no load
    check_model_path(args.checkpoint, args.tokenizer)
    import numpy as np

    from lladax.cli.sample_cmd import render
    from lladax.data.chat import apply_chat_template
    from lladax.diffusion import sampling

    cfg, params, tokenizer = load_model(args.checkpoint, args.dtype, args.tokenizer)
    rng = common.rng_from_args(args)
    history: list[int] = []
    print("lladax chat: /reset clears the conversation, /quit exits.")
    while True:
        try:
            message = input("user> ").strip()
        except EOFError:
            print()
            return 0
        if message in ("/quit", "/exit"):
            return 0
        if message == "/reset":
            history = []
            print("(history cleared)")
            continue
        if not message:
            continue
        turn = apply_chat_template(tokenizer, [{"role": "user", "content": message}])
        prompt = history + (turn[1:] if history and turn[:1] == [tokenizer.bos_id] else turn)
        canvas = common.generate(params, cfg, np.asarray([prompt], np.int32), None, sampler, rng)
        answer = sampling.decode_answer(canvas[0], len(prompt), cfg)
        print(f"assistant> {render(tokenizer, answer, cfg.mask_token_id).strip()}")
        history = [int(t) for t in np.asarray(canvas[0]) if int(t) != cfg.eos_token_id]
