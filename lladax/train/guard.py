"""The guard of the train step: a step whose loss or gradients are not finite is skipped and
counted; after `nan_lr_drop_after` consecutive skips the learning rate is scaled by
`nan_lr_drop_factor`; a finite loss above `spike_factor` × its running mean is counted as a spike.
The counters live in `TrainState.guard` ([] scalars) and are updated inside the jitted step, with
no host sync; the loop logs them.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from lladax.train.run_config import TrainConfig

SPIKE_WARMUP = 20  # finite steps before spikes are judged (the running mean must exist first)
SPIKE_HORIZON = 100  # the running mean of the loss averages over about this many steps


def new_guard() -> dict[str, jax.Array]:
    """The guard's counters at step 0 (all [] scalars)."""
    i32, f32 = (
        functools.partial(jnp.asarray, dtype=jnp.int32),
        functools.partial(jnp.asarray, dtype=jnp.float32),
    )
    return {
        "skipped": i32(0),  # steps whose update was skipped (non-finite), in total
        "streak": i32(0),  # ... consecutively, up to now (reset by an LR drop)
        "lr_scale": f32(1.0),  # product of the automatic LR drops
        "spikes": i32(0),  # loss spikes seen
        "last_spike_step": i32(-1),
        "last_spike_loss": f32(0.0),
        "loss_mean": f32(0.0),  # running mean of finite, non-spike losses
        "loss_count": i32(0),
    }  # how many losses went into it


def all_finite(tree: Any) -> jax.Array:
    """[] bool: every element of every leaf of `tree` is finite."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return functools.reduce(jnp.logical_and, leaves, jnp.asarray(True))


def update_guard(
    g: dict[str, jax.Array], loss: jax.Array, finite: jax.Array, step: jax.Array, tc: TrainConfig
) -> dict[str, jax.Array]:
    """The guard's counters after a step with `loss` ([] f32; `finite` [] bool)."""
    g = dict(g)
    g["skipped"] = g["skipped"] + (~finite).astype(jnp.int32)
    g["streak"] = jnp.where(finite, 0, g["streak"] + 1)
    if tc.nan_lr_drop_after:
        drop = g["streak"] >= tc.nan_lr_drop_after
        g["lr_scale"] = jnp.where(drop, g["lr_scale"] * tc.nan_lr_drop_factor, g["lr_scale"])
        g["streak"] = jnp.where(drop, 0, g["streak"])
    spike = jnp.asarray(False)
    if tc.spike_factor:
        spike = (
            finite & (g["loss_count"] >= SPIKE_WARMUP) & (loss > tc.spike_factor * g["loss_mean"])
        )
        g["spikes"] = g["spikes"] + spike.astype(jnp.int32)
        g["last_spike_step"] = jnp.where(spike, step, g["last_spike_step"])
        g["last_spike_loss"] = jnp.where(spike, loss, g["last_spike_loss"])
    # An exact mean over the first SPIKE_HORIZON losses, then an EMA; spikes do not enter it.
    take = finite & ~spike
    count = g["loss_count"] + take.astype(jnp.int32)
    rate = jnp.maximum(1.0 / jnp.maximum(count, 1), 1.0 / SPIKE_HORIZON)
    g["loss_mean"] = jnp.where(
        take, g["loss_mean"] + rate * (loss - g["loss_mean"]), g["loss_mean"]
    )
    g["loss_count"] = count
    return g
