"""Orbax run checkpoints: exact resume, resharding, params-only restore, damaged directories."""

import dataclasses
import shutil

import jax
import numpy as np
import pytest

from lladax import checkpoint, sharding, train
from lladax.config import preset

CFG = preset("tiny")
TC = train.TrainConfig(steps=10, batch_size=8, lr=1e-3, truncate_prob=0.0)


def _state(mesh=None):
    return train.init_state(CFG, TC, train.make_optimizer(TC), jax.random.key(0), mesh)


def _equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(jax.random.key_data(x) if
                                                 jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
                                                 else x),
                                      np.asarray(jax.random.key_data(y) if
                                                 jax.dtypes.issubdtype(y.dtype, jax.dtypes.prng_key)
                                                 else y))


@pytest.fixture(scope="module")
def trained_state():
    state = _state()
    tokens = jax.random.randint(jax.random.key(1), (8, 16), 0, CFG.vocab_size)
    # Not donated: the same state is saved by every test.
    step = jax.jit(lambda s, b: train.train_step(s, b, cfg=CFG, tc=TC,
                                                 optimizer=train.make_optimizer(TC)))
    return step(state, {"tokens": tokens})[0]


@pytest.fixture
def saved(tmp_path, trained_state):
    state = trained_state
    mgr = checkpoint.manager(tmp_path)
    checkpoint.save(mgr, state, {"model": dataclasses.asdict(CFG)})
    mgr.wait_until_finished()
    return tmp_path, state


def test_restore_is_exact(saved):
    run_dir, state = saved
    restored = checkpoint.restore(checkpoint.manager(run_dir), _state())
    assert int(restored.step) == 1
    _equal(restored, state)


def test_restore_onto_another_mesh(saved):
    run_dir, state = saved
    mesh = sharding.make_mesh(data=1, fsdp=4, tensor=2)
    with jax.set_mesh(mesh):
        like = _state(mesh)
        restored = checkpoint.restore(checkpoint.manager(run_dir), like)
    assert restored.params["wte"].sharding == like.params["wte"].sharding
    assert not restored.params["wte"].sharding.is_fully_replicated
    _equal(restored.params, state.params)


def test_params_only_load(saved):
    run_dir, state = saved
    cfg, params = checkpoint.load_params(run_dir)
    assert cfg == CFG
    _equal(params, state.params)


def test_incomplete_save_never_replaces_good_checkpoint(saved):
    run_dir, state = saved
    # A crash mid-save leaves only a temporary directory behind: it is not a checkpoint.
    partial = run_dir / "checkpoints" / "5.orbax-checkpoint-tmp-123"
    shutil.copytree(run_dir / "checkpoints" / "1", partial)
    assert checkpoint.manager(run_dir).latest_step() == 1
    _equal(checkpoint.load_params(run_dir)[1], state.params)


def test_missing_and_corrupt(tmp_path, saved):
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoints/ directory"):
        checkpoint.load_params(tmp_path / "nowhere")
    run_dir, _ = saved
    for f in (run_dir / "checkpoints" / "1" / "params").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "metadata" not in f.name:
            f.write_bytes(b"garbage")
    with pytest.raises(checkpoint.CheckpointError, match="corrupt"):
        checkpoint.load_params(run_dir)
