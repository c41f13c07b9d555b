"""The batches of a training run: this process's training iterator and the fixed held-out set.

`data.format` picks the reader: "text" batches come from `lladax.data.pipeline` (packed or
not), "chat" batches from `lladax.data.sft` (tokens + prompt_lengths), "preference" batches from
`lladax.data.preference` (chosen + rejected + prompt_lengths). Used by `lladax.train.loop`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lladax.config import ModelConfig
from lladax.data import pipeline, preference, sft
from lladax.train.objectives import eval_loss, eval_preference
from lladax.train.run_config import PreferenceConfig, RunConfig

EVAL_SEED = 12345  # the held-out loss draws the same noise at every evaluation


# The prompt + answer readers by data.format, and the `data` fields each takes (train and eval).
_PAIRED = {
    "chat": (sft.make_sft_batches, ("source", "seq_len", "min_answer_len", "random_offset")),
    "preference": (preference.make_preference_batches, ("source", "seq_len", "min_answer_len")),
}


def train_batches(run: RunConfig, tok: Any, batch_size: int) -> Any:
    """This process's checkpointable iterator of batches (`batch_size` rows each): text
    (`pipeline.make_batches`, packed or not) or chat (`sft.make_sft_batches`) by `data.format`."""
    d = run.data
    where = dict(process_index=jax.process_index(), process_count=jax.process_count())
    if d.format in _PAIRED:
        reader, options = _PAIRED[d.format]
        return iter(reader(tok, batch_size=batch_size, seed=d.seed, **where, **d.options(*options)))
    return pipeline.make_batches(
        tok, split="train", batch_size=batch_size, **where, **pipeline.options_from_config(d)
    )


def eval_set(run: RunConfig, tok: Any) -> list[dict[str, np.ndarray]]:
    """Held-out GLOBAL batches (identical on every process), fixed for the whole run; none
    when `eval.every` or `eval.batches` is 0."""
    d, e = run.data, run.eval
    if not e.enabled:
        return []
    if d.format in _PAIRED:
        reader, options = _PAIRED[d.format]
        batches = iter(
            reader(tok, batch_size=e.batch_size, seed=0, split="eval", **d.options(*options))
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
    cfg: ModelConfig, evals: list[dict[str, jax.Array]], pref: PreferenceConfig | None = None
) -> Callable[[Any], dict[str, float]] | None:
    """TrainState -> {"eval_loss": mean loss over `evals` with fixed noise (comparable across
    steps)}; with `pref` the preference loss against the state's reference, and also
    "eval_reward_accuracy" (the fraction of held-out pairs whose score is > 0). None without
    held-out batches."""
    if not evals:
        return None
    key = jax.random.key(EVAL_SEED)

    def evaluate(state: Any) -> dict[str, float]:
        if pref is not None:
            out = [
                eval_preference(
                    state.params, state.reference, cfg, pref, b, jax.random.fold_in(key, i)
                )
                for i, b in enumerate(evals)
            ]
            loss = float(jnp.mean(jnp.stack([loss for loss, _ in out])))
            acc = float(jnp.mean(jnp.stack([m["reward_accuracy"] for _, m in out])))
            return {"eval_loss": loss, "eval_reward_accuracy": acc}
        losses = [
            eval_loss(
                state.params,
                cfg,
                b["tokens"],
                jax.random.fold_in(key, i),
                prompt_lengths=b.get("prompt_lengths"),
            )
            for i, b in enumerate(evals)
        ]
        return {"eval_loss": float(jnp.mean(jnp.stack(losses)))}

    return evaluate
