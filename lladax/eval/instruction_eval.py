"""Scoring a model on the synthetic instruction tasks (`lladax.data.instructions`): greedy replies
from
the sampler, to compare with `instructions.exact_match` / `accuracy_by_task`. Kept apart from the
task definitions so the data modules never import the samplers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from lladax.data.chat import apply_chat_template
from lladax.data.instructions import Example
from lladax.diffusion import sampling


def generate_replies(
    params: Any,
    cfg: Any,
    tokenizer: Any,
    items: Sequence[Example],
    *,
    gen_length: int = 16,
    steps: int | None = None,
    block_length: int | None = None,
    batch_size: int = 64,
) -> list[str]:
    """Greedy replies of `sampling.generate` to each example's prompt (chat template applied).

    Prompts are left-padded (pad id, attention mask 0) to ONE length for the whole list and the
    last batch is filled with copies, so the sampler compiles a single program.
    """
    prompts = [apply_chat_template(tokenizer, ex.messages(with_answer=False)) for ex in items]
    if not prompts:
        return []
    width = max(len(p) for p in prompts)
    replies: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        rows = chunk + [chunk[-1]] * (min(batch_size, len(prompts)) - len(chunk))
        tokens = np.full((len(rows), width), cfg.pad_token_id, np.int32)
        mask = np.zeros((len(rows), width), np.int32)
        for r, ids in enumerate(rows):
            tokens[r, width - len(ids) :], mask[r, width - len(ids) :] = ids, 1
        canvas = np.asarray(
            jax.device_get(
                sampling.generate(
                    params,
                    cfg,
                    tokens,
                    mask,
                    steps=steps or gen_length,
                    gen_length=gen_length,
                    block_length=block_length or gen_length,
                )
            )
        )
        replies += [tokenizer.decode_reply(canvas[r, width:]) for r in range(len(chunk))]
    return replies
