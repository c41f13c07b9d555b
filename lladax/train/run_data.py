"""The batches of a training run: this process's training iterator and the fixed held-out set.

`data.format` picks the reader: "text" batches come from `lladax.data.pipeline` (packed or
not), "chat" batches from `lladax.data.sft` (tokens + prompt_lengths). Used by
`lladax.train.loop`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lladax.config import ModelConfig
from lladax.data import pipeline, sft
from lladax.train.run_config import RunConfig
from lladax.train.trainer import eval_loss

EVAL_SEED = 12345  # the held-out loss draws the same noise at every evaluation


# The `data` fields that `sft.make_sft_batches` takes (train and eval alike).
_CHAT_OPTIONS = ("source", "seq_len", "min_answer_len", "random_offset")


def train_batches(run: RunConfig, tok: Any, batch_size: int) -> Any:
    """This process's checkpointable iterator of batches (`batch_size` rows each): text
    (`pipeline.make_batches`, packed or not) or chat (`sft.make_sft_batches`) by `data.format`."""
    d = run.data
    where = dict(process_index=jax.process_index(), process_count=jax.process_count())
    if d.format == "chat":
        return iter(
            sft.make_sft_batches(
                tok, batch_size=batch_size, seed=d.seed, **where, **d.options(*_CHAT_OPTIONS)
            )
        )
    return pipeline.make_batches(
        tok, split="train", batch_size=batch_size, **where, **pipeline.options_from_config(d)
    )


def eval_set(run: RunConfig, tok: Any) -> list[dict[str, np.ndarray]]:
    """Held-out GLOBAL batches (identical on every process), fixed for the whole run; none
    when `eval.every` or `eval.batches` is 0."""
    d, e = run.data, run.eval
    if not e.enabled:
        return []
    if d.format == "chat":
        batches = iter(
            sft.make_sft_batches(
                tok, batch_size=e.batch_size, seed=0, split="eval", **d.options(*_CHAT_OPTIONS)
            )
        )
        return [next(batches) for _ in range(e.batches)]
    return pipeline.eval_batches(
        tok,
        batch_size=e.batch_size,
        max_batches=e.batches,
        **d.options("source", "seq_len", "field"),
    )


def put_global(batch: dict[str, np.ndarray], sharding_: Any) -> dict[str, jax.Array]:
    """Place a batch that every process holds whole (eval) as global arrays."""
    return {
        k: jax.make_array_from_callback(v.shape, sharding_, lambda idx, v=v: v[idx])
        for k, v in batch.items()
    }


def held_out_loss(
    cfg: ModelConfig, evals: list[dict[str, jax.Array]]
) -> Callable[[Any], float] | None:
    """params -> the mean loss over `evals` with fixed noise (comparable across steps); None
    without held-out batches."""
    if not evals:
        return None
    key = jax.random.key(EVAL_SEED)

    def evaluate(params: Any) -> float:
        losses = [
            eval_loss(
                params,
                cfg,
                b["tokens"],
                jax.random.fold_in(key, i),
                prompt_lengths=b.get("prompt_lengths"),
            )
            for i, b in enumerate(evals)
        ]
        return float(jnp.mean(jnp.stack(losses)))

    return evaluate
