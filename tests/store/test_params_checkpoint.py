"""Params-only access (`params_checkpoint`): the params or the EMA of a saved run, any saved
step, and the fallback past a damaged newest step."""

import jax
import numpy as np
import pytest
import store_fixtures
from store_fixtures import CFG, damage, equal

from lladax.store import params_checkpoint
from lladax.store.integrity import CheckpointError, CheckpointWarning

saved, states = store_fixtures.saved, store_fixtures.states  # the shared fixtures


def test_params_only_and_ema_load(saved):
    run_dir, (_, two) = saved
    cfg, params = params_checkpoint.load_params(run_dir)
    assert cfg == CFG
    equal(params, two.params)
    _, ema = params_checkpoint.load_params(run_dir, use_ema=True)
    equal(ema, two.ema)
    assert not all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(ema), jax.tree.leaves(params), strict=True)
    )
    equal(params_checkpoint.load_params(run_dir, 1)[1], saved[1][0].params)  # an older saved step
    with pytest.raises(CheckpointError, match=r"has no step 7: the saved steps are \[1, 2\]") as e:
        params_checkpoint.load_params(run_dir, 7)
    assert "\n" not in str(e.value)


def test_damaged_latest_params_only_load_falls_back(saved):
    run_dir, (one, _) = saved
    damage(run_dir / "checkpoints" / "2", "bitflip")
    with pytest.warns(CheckpointWarning, match="using the previous one"):
        _, params = params_checkpoint.load_params(run_dir)
    equal(params, one.params)
