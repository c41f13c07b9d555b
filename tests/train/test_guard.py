"""The guard's counters (`guard`): loss spikes are counted and kept out of the running mean."""

import jax.numpy as jnp
import pytest

from lladax.train import guard
from lladax.train.run_config import TrainConfig


def test_spikes_counted_and_kept_out_of_the_mean():
    tc = TrainConfig(spike_factor=3.0)
    g = guard.new_guard()
    true = jnp.asarray(True)
    for i in range(guard.SPIKE_WARMUP):
        g = guard.update_guard(g, jnp.float32(2.0 + 0.01 * (i % 3)), true, jnp.int32(i), tc)
    mean = float(g["loss_mean"])
    assert mean == pytest.approx(2.01, abs=0.01) and int(g["spikes"]) == 0
    g = guard.update_guard(g, jnp.float32(5.0), true, jnp.int32(20), tc)  # 5 < 3 x 2.01
    assert int(g["spikes"]) == 0
    g = guard.update_guard(g, jnp.float32(9.0), true, jnp.int32(21), tc)
    assert int(g["spikes"]) == 1 and int(g["last_spike_step"]) == 21
    assert float(g["last_spike_loss"]) == 9.0
    before = float(g["loss_mean"])
    g = guard.update_guard(g, jnp.float32(100.0), true, jnp.int32(22), tc)
    assert int(g["spikes"]) == 2 and float(g["loss_mean"]) == before
