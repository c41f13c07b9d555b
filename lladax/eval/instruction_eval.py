"""Scoring a model on the synthetic instruction tasks (`lladax.data.instructions`): greedy replies
from the sampler, to compare with `instructions.exact_match` / `accuracy_by_task`. Kept apart from
the task definitions so the data modules never import the samplers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from lladax.batching import left_pad
from lladax.data.chat import apply_chat_template
from lladax.data.instructions import Example
from lladax.diffusion import sampling
from lladax.diffusion.sampler_config import SamplerConfig

# Replies are short: 16 tokens, one per step, one block (greedy).
REPLY_SAMPLER = SamplerConfig(gen_length=16)


def generate_replies(
    params: Any,
    cfg: Any,
    tokenizer: Any,
    items: Sequence[Example],
    sampler: SamplerConfig = REPLY_SAMPLER,
    *,
    batch_size: int = 64,
) -> list[str]:
    """Replies of `sampling.generate_with(sampler)` to each example's prompt (chat template
    applied).

    Prompts are left-padded (pad id, attention mask 0) to ONE length for the whole list and the
    last batch is filled with copies, so the sampler compiles a single program. Any kind
    (`sampling.generate_any`): a block-diffusion model decodes its own blocks (`block_sampling`;
    block_length None is its block_size) and, by default, stops each reply at its EOS block;
    the autoregressive baseline decodes left to right.
    """
    prompts = [apply_chat_template(tokenizer, ex.messages(with_answer=False)) for ex in items]
    if not prompts:
        return []
    width = max(len(p) for p in prompts)
    replies: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        tokens, mask = left_pad(
            chunk, cfg.pad_token_id, width=width, num_rows=min(batch_size, len(prompts))
        )
        canvas = np.asarray(
            jax.device_get(sampling.generate_any(params, cfg, tokens, mask, sampler))
        )
        replies += [tokenizer.decode_reply(canvas[r, width:]) for r in range(len(chunk))]
    return replies
