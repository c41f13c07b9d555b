"""Meshes and the one logical-axis rule table.

Parameters and activations are annotated with logical axis names; `RULES` maps each to mesh axes.
Mesh axes: `data` (pure data parallel), `fsdp` (data parallel with sharded params/optimizer state)
and `tensor` (Megatron-style tensor parallel over heads / MLP / vocab).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis (or tuple of axes, or None = replicated)
RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("layers", None),
    ("norm", None),
    # activations
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)


def logical_to_spec(names: Sequence[str | None], rules=RULES) -> PartitionSpec:
    """Map logical axis names to a PartitionSpec; a mesh axis is used at most once."""
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name in names:
        axes = table.get(name) if name is not None else None
        if name is not None and name not in table:
            raise KeyError(f"logical axis {name!r} has no sharding rule; add it to RULES")
        axes_tuple = (axes,) if isinstance(axes, str) else tuple(axes or ())
        axes_tuple = tuple(a for a in axes_tuple if a not in used)
        used.update(axes_tuple)
        spec.append(
            None if not axes_tuple else axes_tuple[0] if len(axes_tuple) == 1 else axes_tuple
        )
    return PartitionSpec(*spec)


def _fill(sizes: list[int], n_devices: int, what: str) -> list[int]:
    """Resolve at most one -1 in `sizes` so that their product is `n_devices`."""
    sizes = list(sizes)
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one {what} mesh axis may be -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if n_devices % known:
            raise ValueError(
                f"{n_devices} devices do not split into the fixed {what} axes ({known})"
            )
        sizes[sizes.index(-1)] = n_devices // known
    if int(np.prod(sizes)) != n_devices:
        raise ValueError(
            f"{what} mesh data×fsdp×tensor = {sizes} needs {int(np.prod(sizes))} devices, "
            f"but {n_devices} are available: change the mesh sizes"
        )
    return sizes


def make_mesh(
    data: int = -1,
    fsdp: int = 1,
    tensor: int = 1,
    *,
    dcn_data: int = 1,
    dcn_fsdp: int = 1,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """A (data, fsdp, tensor) mesh with Auto axes; `-1` takes the remaining devices.

    Multislice (several TPU slices joined by the data-center network): `data`/`fsdp`/`tensor`
    are sizes within one slice (fast ICI) and `dcn_data`/`dcn_fsdp` the number of slices along
    data or fsdp; each mesh axis is then dcn × ici long with the slice as its outer factor, so
    only the data/fsdp collectives cross slices (tensor parallelism never does).
    """
    devices = list(devices if devices is not None else jax.devices())
    n_slices = dcn_data * dcn_fsdp
    if n_slices == 1:
        sizes = _fill([data, fsdp, tensor], len(devices), "")
        return Mesh(device_grid(sizes, devices), MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    slices: dict[int, list[jax.Device]] = {}
    for d in devices:
        slices.setdefault(getattr(d, "slice_index", 0), []).append(d)
    if len(slices) != n_slices or len({len(v) for v in slices.values()}) != 1:
        raise ValueError(
            f"dcn_data×dcn_fsdp = {n_slices} slices requested, but the devices "
            f"form {len(slices)} slice(s) of sizes "
            f"{sorted(len(v) for v in slices.values())}: match the slice count"
        )
    ici = _fill([data, fsdp, tensor], len(devices) // n_slices, "per-slice")
    return Mesh(
        hybrid_grid([slices[k] for k in sorted(slices)], ici, (dcn_data, dcn_fsdp)),
        MESH_AXES,
        axis_types=(AxisType.Auto,) * 3,
    )


def device_grid(sizes: Sequence[int], devices: Sequence) -> np.ndarray:
    """`devices` (one slice) as an array of shape `sizes`: in TPU torus order where known (as
    `jax.make_mesh` lays them out), else in the given order.

    A mesh axis whose size is not a product of whole torus axes (tensor=2 on a v5p 8x8x8 slice)
    splits a physical axis: `jax.make_mesh` refuses that except on v5e, so such layouts are laid
    out with `allow_split_physical_axes` instead (neighbours along one physical axis form the
    small axis; `lladax plan` may choose them).
    """
    devices = list(devices)
    if getattr(devices[0], "platform", None) != "tpu":
        return np.asarray(devices, dtype=object).reshape(tuple(sizes))
    from jax.experimental import mesh_utils

    try:
        return mesh_utils.create_device_mesh(tuple(sizes), devices)
    except (NotImplementedError, ValueError, AssertionError):
        return mesh_utils.create_device_mesh(tuple(sizes), devices, allow_split_physical_axes=True)


def hybrid_grid(slices: Sequence[Sequence], ici: Sequence[int], dcn: tuple[int, int]) -> np.ndarray:
    """Arrange equal-sized device slices into a [data, fsdp, tensor] grid: each slice is an
    `ici` block (in TPU torus order where known) and the slices tile the data/fsdp axes `dcn`."""

    grid = np.stack([device_grid(ici, s) for s in slices]).reshape(*dcn, 1, *ici)
    return grid.transpose(0, 3, 1, 4, 2, 5).reshape(dcn[0] * ici[0], dcn[1] * ici[1], ici[2])


def named_sharding(mesh: Mesh, names: Sequence[str | None]) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(names))


def tree_shardings(mesh: Mesh, logical_tree):
    """Map a pytree of logical-name tuples (see `model.param_logical_axes`) to NamedShardings."""
    return jax.tree.map(
        lambda names: named_sharding(mesh, names),
        logical_tree,
        is_leaf=lambda x: isinstance(x, tuple),
    )


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """`with_sharding_constraint` by logical names under the current mesh; no-op without one."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names))
