"""Meshes and the logical-axis rule table: multislice device grids, clear mesh errors, and every
large parameter placed (sharded) by a rule."""

import types

import jax
import pytest

from lladax import model, sharding
from lladax.config import preset


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
    shardings = sharding.tree_shardings(mesh, model.param_logical_axes(cfg))
    abstract = model.abstract_params(cfg)
    for (path, leaf), sh in zip(jax.tree_util.tree_leaves_with_path(abstract),
                                jax.tree.leaves(shardings), strict=True):
        replicated = all(axis is None for axis in sh.spec)
        if leaf.size > 1_000_000 and shape != (8, 1, 1):  # pure data parallel replicates
            assert not replicated, f"{jax.tree_util.keystr(path)} {leaf.shape} is replicated"
        assert sh.shard_shape(leaf.shape)  # the spec divides the shape
