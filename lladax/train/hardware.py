"""The accelerators a run can rent, in one table: HBM, bf16 peak, interconnect, TPU topology.

    hardware("v5p-128")     # 64 v5p chips (TPU names count TensorCores for v4/v5p, chips for
    hardware("v6e-256")     # v5e/v6e), one slice; "2xv5p-128" = two slices over the DCN
    hardware("8xh200")      # one 8-GPU node; "4x8xh100" = four nodes over InfiniBand

Bandwidths are per chip and one-directional, from the vendors' data sheets; the planner uses
them only to RANK meshes (`mesh_choice`), never to promise a step time. `fast_bw` is the
interconnect inside a slice or node (TPU ICI, NVLink), `slow_bw` the one between slices or
nodes (TPU data-center network, InfiniBand), where only data-parallel traffic should go.
"""

from __future__ import annotations

import dataclasses
import math

GiB = 1024**3
GB = 1e9


class PlanError(ValueError):
    """The hardware, mesh or batch cannot be planned; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class Chip:
    """One row of the table: a chip generation."""

    hbm_gib: float
    bf16_tflops: float  # dense, per chip
    fast_gbps: float  # GB/s per chip inside a slice / node (ICI, NVLink)
    slow_gbps: float  # GB/s per chip between slices / nodes (DCN, InfiniBand)
    cores_in_name: int = 1  # TPU names count TensorCores: v4 / v5p chips have 2
    torus_dims: int = 0  # TPU ICI torus dimensions (0: a GPU)


CHIPS = {
    "v4": Chip(32, 275, 300, 12.5, cores_in_name=2, torus_dims=3),
    "v5e": Chip(16, 197, 200, 12.5, torus_dims=2),
    "v5p": Chip(95, 459, 600, 12.5, cores_in_name=2, torus_dims=3),
    "v6e": Chip(32, 918, 448, 12.5, torus_dims=2),
    "a100": Chip(80, 312, 300, 25),
    "h100": Chip(80, 989, 450, 50),
    "h200": Chip(141, 989, 450, 50),
    "b200": Chip(180, 2250, 900, 50),
}
GPU_NODE = 8  # GPUs per node (NVLink domain) when a name gives no node count


@dataclasses.dataclass(frozen=True)
class Hardware:
    """One accelerator slice: `chips` devices as JAX sees them (a v4/v5p megacore is one)."""

    name: str
    chips: int
    hbm_bytes: float  # per chip
    peak_flops: float  # dense bf16 per chip, data sheet
    topology: str | None = None  # `jax.experimental.topologies` name, e.g. "v5p:4x4x4"
    slices: int = 1  # multislice / multi-node: `chips` counts all slices together
    fast_bw: float = 100 * GB  # bytes/s per chip inside a slice
    slow_bw: float = 12.5 * GB  # bytes/s per chip between slices

    @property
    def chips_per_slice(self) -> int:
        return self.chips // self.slices


def _grid(chips: int, dims: int) -> str:
    """Most cube-like power-of-two chip grid, e.g. 64 chips in 3-D -> 4x4x4."""
    if chips & (chips - 1):
        raise PlanError(f"{chips} chips is not a power of two: TPU slices are 2^k chips")
    sizes = [1] * dims
    for i in range(int(math.log2(chips))):
        sizes[-1 - i % dims] *= 2  # grow from the last axis: 32 -> 2x4x4
    return "x".join(map(str, sorted(sizes)))


def _known() -> str:
    tpus = [f"{g}-N" for g, c in CHIPS.items() if c.torus_dims]
    gpus = [f"Nx{g}" for g, c in CHIPS.items() if not c.torus_dims]
    return ", ".join(tpus + gpus)


def hardware(name: str) -> Hardware:
    """`v5p-128`, `2xv5p-128` (two slices), `8xh100` (a node), `4x8xh100` (four nodes)."""
    key = name.lower().replace("_", "-")
    count, sep, rest = key.partition("x")
    if sep and count.isdigit() and int(count) >= 1:
        chip = CHIPS.get(rest)
        if chip is not None and not chip.torus_dims:  # "8xh100": one node of 8 GPUs
            return _made(name, int(count), chip, None)
        try:
            one = hardware(rest)  # "2xv5p-128", "4x8xh100": that many slices / nodes
        except PlanError:
            one = None
        if one is not None and one.slices == 1:
            return dataclasses.replace(
                one, name=name, chips=one.chips * int(count), slices=int(count)
            )
    gen, _, n = key.partition("-")
    chip = CHIPS.get(gen)
    if chip is not None and chip.torus_dims and n.isdigit():
        chips = int(n) // chip.cores_in_name
        if chips < 1:
            raise PlanError(f"{name}: too few cores for one {gen} chip")
        return _made(name, chips, chip, f"{gen}:{_grid(chips, chip.torus_dims)}")
    raise PlanError(f"unknown hardware {name!r}: use one of {_known()} (e.g. v5p-128, 8xh100)")


def _made(name: str, chips: int, chip: Chip, topology: str | None) -> Hardware:
    return Hardware(
        name,
        chips,
        chip.hbm_gib * GiB,
        chip.bf16_tflops * 1e12,
        topology,
        fast_bw=chip.fast_gbps * GB,
        slow_bw=chip.slow_gbps * GB,
    )
