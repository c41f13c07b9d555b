"""Meshes and the logical-axis rule table: multislice device grids, every parameter placed by a
rule, and data-parallel / FSDP / FSDP+TP training equal to one device."""

import functools
import types

import jax
import numpy as np
import pytest

from lladax.config import preset
from lladax.model import sharding, transformer
from lladax.train import trainer
from lladax.train.run_config import TrainConfig


def test_multislice_grid_keeps_slices_contiguous():
    slices = [[types.SimpleNamespace(slice=s, i=i) for i in range(4)] for s in range(2)]
    along_data = sharding.hybrid_grid(slices, (2, 2, 1), (2, 1))
    assert along_data.shape == (4, 2, 1)
    assert {d.slice for d in along_data[:2].ravel()} == {0}
    assert {d.slice for d in along_data[2:].ravel()} == {1}
    along_fsdp = sharding.hybrid_grid(slices, (1, 4, 1), (1, 2))
    assert along_fsdp.shape == (1, 8, 1)
    assert [d.slice for d in along_fsdp.ravel()] == [0] * 4 + [1] * 4
    # tensor parallel stays inside a slice whatever the layout
    tp = sharding.hybrid_grid(slices, (1, 2, 2), (2, 1))
    assert all(len({d.slice for d in tp[i, j]}) == 1 for i in range(2) for j in range(2))


def test_mesh_errors_are_clear():
    with pytest.raises(ValueError, match="2 slices requested, but the devices form 1"):
        sharding.make_mesh(data=-1, dcn_data=2)
    with pytest.raises(ValueError, match="needs 12 devices, but 8 are available"):
        sharding.make_mesh(data=3, fsdp=4)
    with pytest.raises(ValueError, match="at most one"):
        sharding.make_mesh(data=-1, fsdp=-1)
    with pytest.raises(KeyError, match="no sharding rule"):
        sharding.logical_to_spec(("embed", "nonsense"))


@pytest.mark.parametrize("shape", [(1, 8, 1), (1, 2, 4), (8, 1, 1)])
def test_every_large_parameter_is_sharded(shape):
    cfg = preset("llada_8b")
    mesh = sharding.make_mesh(*shape)
    shardings = sharding.tree_shardings(mesh, transformer.param_logical_axes(cfg))
    abstract = transformer.abstract_params(cfg)
    for (path, leaf), sh in zip(
        jax.tree_util.tree_leaves_with_path(abstract), jax.tree.leaves(shardings), strict=True
    ):
        replicated = all(axis is None for axis in sh.spec)
        if leaf.size > 1_000_000 and shape != (8, 1, 1):  # pure data parallel replicates
            assert not replicated, f"{jax.tree_util.keystr(path)} {leaf.shape} is replicated"
        assert sh.shard_shape(leaf.shape)  # the spec divides the shape


@functools.cache  # the one-device reference is shared by the parametrized cases
def _train_two_steps(mesh_shape):
    cfg = preset("tiny", dtype="float32")
    tc = TrainConfig(steps=4, batch_size=8, lr=3e-3, warmup_steps=1, grad_accum=2)
    optimizer = trainer.make_optimizer(tc)
    tokens = np.random.default_rng(0).integers(5, cfg.vocab_size, size=(2, 8, 32), dtype=np.int32)
    if mesh_shape is None:
        with jax.set_mesh(sharding.make_mesh(devices=jax.devices()[:1])):
            state = trainer.init_state(cfg, tc, optimizer, jax.random.key(0))
            step = trainer.jit_train_step(cfg, tc, optimizer)
            losses = []
            for t in tokens:
                state, m = step(state, {"tokens": t})
                losses.append(float(m["loss"]))
        return losses, jax.device_get(state.params), jax.device_get(state.opt_state)
    mesh = sharding.make_mesh(*mesh_shape)
    with jax.set_mesh(mesh):
        state = trainer.init_state(cfg, tc, optimizer, jax.random.key(0), mesh)
        batch_sh = sharding.named_sharding(mesh, ("batch", None))
        step = trainer.jit_train_step(cfg, tc, optimizer, trainer.shardings_of(state), batch_sh)
        losses = []
        for t in tokens:
            state, m = step(state, {"tokens": jax.device_put(t, batch_sh)})
            losses.append(float(m["loss"]))
    big = [x for x in jax.tree.leaves(state.opt_state) if getattr(x, "size", 0) >= 4096]
    if mesh_shape[1] * mesh_shape[2] > 1:  # optimizer moments live sharded like the params
        assert all(not x.sharding.is_fully_replicated for x in big)
    return losses, jax.device_get(state.params), jax.device_get(state.opt_state)


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (1, 8, 1), (2, 2, 2)])
def test_sharded_training_equals_one_device(mesh_shape):
    ref_losses, ref_params, ref_opt = _train_two_steps(None)
    losses, params, opt = _train_two_steps(mesh_shape)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5)
    for a, b in zip(jax.tree.leaves(opt), jax.tree.leaves(ref_opt), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)
