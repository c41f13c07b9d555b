"""Scoring the synthetic instruction tasks with the sampler (`lladax.eval.instruction_eval`)."""

import numpy as np

from lladax.data import chat, instructions
from lladax.eval import instruction_eval


def test_generate_replies_pads_to_one_shape_and_decodes_in_order(tok, monkeypatch):
    """The sampler is replaced by an oracle that answers each (left-padded) prompt correctly: the
    replies come back in order and every call has the same shape (one compiled program)."""
    from lladax import config
    from lladax.diffusion import sampling
    from lladax.diffusion.sampler_config import SamplerConfig

    cfg = config.preset("tiny")
    items = instructions.examples(["copy", "add", "lookup"], "eval", per_task=2)
    answers = {
        tuple(chat.apply_chat_template(tok, ex.messages(with_answer=False))): ex.answer
        for ex in items
    }
    shapes = []

    def oracle(params, cfg_, tokens, mask, sampler, rng=None, **_):
        steps, gen_length, block_length = (
            getattr(sampler.resolved(), n) for n in ("steps", "gen_length", "block_length")
        )
        shapes.append((tokens.shape, steps, gen_length, block_length))
        canvas = np.full((tokens.shape[0], tokens.shape[1] + gen_length), cfg.eos_token_id)
        canvas[:, : tokens.shape[1]] = tokens
        for r, (row, m) in enumerate(zip(tokens, mask, strict=True)):
            assert set(row[m == 0]) <= {cfg.pad_token_id} and m[-1] == 1  # left padding
            reply = [*chat.encode_reply(tok, answers[tuple(row[m == 1])]), tok.eot_id, 7, 7]
            canvas[r, tokens.shape[1] : tokens.shape[1] + len(reply)] = reply[:gen_length]
        return canvas

    monkeypatch.setattr(sampling, "generate_with", oracle)
    replies = instruction_eval.generate_replies(
        None, cfg, tok, items, SamplerConfig(gen_length=24), batch_size=4
    )
    assert replies == [ex.answer for ex in items]
    assert len(shapes) == 2 and shapes[0] == shapes[1] and shapes[0][0][0] == 4
    assert shapes[0][1:] == (24, 24, 24)
