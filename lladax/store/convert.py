"""Hugging Face LLaDA checkpoints (config.json + safetensors) <-> lladax params, streaming.

Loading plans everything from config.json and the safetensors headers first (every name, shape
and dtype checked; one error lists all problems), then reads one HF tensor at a time, transposes
PyTorch [out, in] to [in, out], places it directly in its target sharding and writes it into its
slot of the stacked [layers, ...] leaf on device (a donated in-place update). Host memory is about
one HF tensor, whatever the checkpoint size; the params themselves live where the shardings put
them. Saving streams the other way: one layer slice at a time goes device -> host -> file.
The HF names, shapes and checks are `hf_format`; the Orbax side of a conversion is
`params_checkpoint.save_params` / `load_params`.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from lladax.config import ModelConfig
from lladax.files import atomic_write
from lladax.model.sharding import tree_shardings
from lladax.model.transformer import Params, abstract_params, param_logical_axes
from lladax.store.hf_format import (
    HFLeaf,
    check_tensors,
    get_path,
    hf_leaves,
    hf_shapes,
    load_config,
    set_path,
)
from lladax.store.safetensors_io import (
    INDEX_NAME,
    SINGLE_NAME,
    ShardWriter,
    aligned_empty,
    file_tensors,
    parse_size,
    plan_shards,
    read_tensor,
    read_transposed,
    scan_dir,
)

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "generation_config.json",
)
Progress = Callable[[int], None]  # called with the bytes of each tensor done
# Written by `lladax convert` into every output (HF or Orbax): marks the directory as a
# converted model, so a later convert may replace it (with --overwrite) and nothing else.
# Loaders ignore it (HF loaders read config.json and the safetensors; load_hf reads the same).
EXPORT_MARKER = "lladax_export.json"
# The kinds the format carries: LLaDA's, and block diffusion's with config.json's "lladax_kind"
# and "block_size" (`ModelConfig.to_hf_dict`; LLaDA's remote code ignores them, lladax reads them).
HF_KINDS = ("diffusion", "block_diffusion")


# --- device placement --------------------------------------------------------------------------
def _put(host: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
    """Place a host array in `sharding`, copying to each device only the slice it holds.

    Per-device device_put (not a callback) so no closure keeps `host` alive in a reference cycle;
    each slice is first made contiguous in an aligned buffer that the CPU backend can adopt.
    """

    def contiguous(x: np.ndarray) -> np.ndarray:
        if x.flags.c_contiguous and x.ctypes.data % 64 == 0:
            return x
        out = aligned_empty(x.shape, x.dtype)
        np.copyto(out, x)
        return out

    pieces = [
        jax.device_put(contiguous(host[idx]), device)
        for device, idx in sharding.addressable_devices_indices_map(host.shape).items()
    ]
    return jax.make_array_from_single_device_arrays(host.shape, sharding, pieces)


def _layer_sharding(sharding: jax.sharding.Sharding) -> jax.sharding.Sharding:
    """Sharding of one layer [...] of a stacked [layers, ...] leaf."""
    if isinstance(sharding, NamedSharding):
        spec = tuple(sharding.spec) + (None,) * 8
        if spec[0] is not None:
            raise ValueError(
                f"load_hf cannot stream into a layers-sharded leaf ({sharding.spec})"
                ": keep the 'layers' axis replicated in sharding.RULES"
            )
        return NamedSharding(sharding.mesh, PartitionSpec(*tuple(sharding.spec)[1:]))
    return sharding  # single device / replicated


@functools.cache
def _update_fn(sharding: jax.sharding.Sharding) -> Callable:
    # Donated: the stacked leaf is updated in place, so the device never holds two copies.
    return jax.jit(
        lambda s, x, i: jax.lax.dynamic_update_index_in_dim(s, x.astype(s.dtype), i, 0),
        donate_argnums=0,
        out_shardings=sharding,
    )


@jax.jit
def _take(stacked: jax.Array, i: jax.Array) -> jax.Array:
    return jax.lax.dynamic_index_in_dim(stacked, i, 0, keepdims=False)


def _default_shardings(cfg: ModelConfig, mesh: jax.sharding.Mesh | None) -> Any:
    if mesh is not None:
        return tree_shardings(mesh, param_logical_axes(cfg))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda _: device, abstract_params(cfg))


# --- load / save -------------------------------------------------------------------------------
def load_hf(
    path: str | os.PathLike,
    dtype: Any = jnp.float32,
    mesh: jax.sharding.Mesh | None = None,
    *,
    shardings: Any = None,
    progress: Progress | None = None,
) -> tuple[ModelConfig, Params]:
    """Load a HF LLaDA directory -> (cfg, params), streaming tensor by tensor.

    dtype: storage (and compute) dtype of the params; None keeps the stored dtype.
    mesh: place every leaf in its sharding from `sharding.RULES` on this mesh; `shardings` (a
      pytree of Shardings matching the params) overrides it. Neither: the first device.
    Host memory: about one HF tensor (plus its cast when `dtype` differs from the file's).
    """
    path = Path(path)
    cfg = load_config(path)  # config errors first: they explain the others
    infos = scan_dir(path)
    dtypes = {i.dtype for i in infos.values()}
    target = np.dtype(
        jnp.dtype(dtype) if dtype is not None else dtypes.pop() if len(dtypes) == 1 else np.float32
    )
    cfg = cfg.replace(dtype=target.name, param_dtype=target.name)
    check_tensors(cfg, infos, path)
    shardings = _default_shardings(cfg, mesh) if shardings is None else shardings
    abstract = abstract_params(cfg)

    def host(name: str, leaf: HFLeaf) -> np.ndarray:
        info = infos[name]
        if len(info.shape) == 2:  # every 2-D weight is transposed except the embedding
            hf_view = read_transposed(info, target).T if leaf.transposed else read_tensor(info)
        else:
            hf_view = read_tensor(info)
        if progress is not None:
            progress(info.nbytes)
        return leaf.to_lladax(hf_view.astype(target, copy=False))

    params: Params = {}
    for leaf in hf_leaves(cfg):
        shape, sharding = get_path(abstract, leaf.path).shape, get_path(shardings, leaf.path)
        if not leaf.stacked:
            set_path(params, leaf.path, _put(host(leaf.hf, leaf), sharding))
            continue
        stacked = jax.jit(lambda s=shape: jnp.zeros(s, target), out_shardings=sharding)()
        update, layer_sharding = _update_fn(sharding), _layer_sharding(sharding)
        for i in range(cfg.n_layers):
            layer = _put(host(leaf.hf.format(i=i), leaf), layer_sharding)
            stacked = update(stacked, layer, jnp.int32(i))
            del layer
        set_path(params, leaf.path, stacked)
    return cfg, params


def hf_tensors(
    cfg: ModelConfig, params: Params, dtype: Any = None
) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (HF name, host array in HF layout) in file order, one layer slice at a time."""
    by_name = {}
    for leaf in hf_leaves(cfg):
        by_name.update(
            {leaf.hf.format(i=i): (leaf, i) for i in range(cfg.n_layers)}
            if leaf.stacked
            else {leaf.hf: (leaf, None)}
        )
    for name in hf_shapes(cfg):
        leaf, i = by_name[name]
        value = get_path(params, leaf.path)
        if i is not None:
            value = _take(value, jnp.int32(i)) if isinstance(value, jax.Array) else value[i]
        arr = np.asarray(value)
        arr = arr if dtype is None else arr.astype(dtype, copy=False)
        yield name, np.ascontiguousarray(leaf.to_hf(arr))


def _write_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2) + "\n")


def save_hf(
    path: str | os.PathLike,
    cfg: ModelConfig,
    params: Params,
    max_shard_size: int | str = "5GB",
    *,
    max_shard_bytes: int | None = None,
    dtype: Any = None,
    progress: Progress | None = None,
) -> None:
    """Write a HF LLaDA directory: config.json (hub keys, architectures, auto_map; the kind of a
    block-diffusion model), special_tokens.json and safetensors, sharded with an index above
    `max_shard_size`.

    max_shard_size: HF-style ("5GB" = 5·10⁹ bytes, "2GiB") or bytes; `max_shard_bytes` is the
      older spelling and wins when given. dtype: tensors' dtype in the files (default: the params').
    Each file is written to a temporary name and renamed when complete; host memory is about one
    tensor (the shard is streamed, its header written from the planned shapes).
    """
    if cfg.kind not in HF_KINDS:
        raise ValueError(
            f"only LLaDA (diffusion) and block-diffusion models export to the Hugging Face LLaDA "
            f"format; this one is kind={cfg.kind!r} (the autoregressive baseline, whose causal "
            "attention the format cannot express): keep it as a `lladax train` run"
        )
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    limit = max_shard_bytes if max_shard_bytes is not None else parse_size(max_shard_size)
    out_dtype = np.dtype(dtype if dtype is not None else jax.tree.leaves(params)[0].dtype)
    shapes = hf_shapes(cfg)
    nbytes = {n: int(np.prod(s)) * out_dtype.itemsize for n, s in shapes.items()}
    shards = plan_shards(list(nbytes.items()), limit)
    files = (
        [SINGLE_NAME]
        if len(shards) == 1
        else [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))]
    )
    tensors = hf_tensors(cfg, params, out_dtype)
    for file, names in zip(files, shards, strict=True):
        writer = ShardWriter(path / file, [(n, out_dtype, shapes[n]) for n in names])
        try:
            for _ in names:
                got, arr = next(tensors)
                writer.write(got, arr)
                if progress is not None:
                    progress(arr.nbytes)
        except BaseException:
            writer.abort()
            raise
        writer.close()
    if len(shards) == 1:
        (path / INDEX_NAME).unlink(missing_ok=True)  # a stale index would shadow the new file
    else:
        weight_map = {n: f for f, names in zip(files, shards, strict=True) for n in names}
        _write_json(
            path / INDEX_NAME,
            {"metadata": {"total_size": sum(nbytes.values())}, "weight_map": weight_map},
        )
    hf_config = cfg.to_hf_dict() | {"torch_dtype": out_dtype.name}
    _write_json(path / "config.json", hf_config)
    _write_json(path / "special_tokens.json", cfg.special_tokens())


def write_export_marker(path: str | os.PathLike, info: dict[str, Any]) -> None:
    """Write `EXPORT_MARKER` (how the directory was made: direction, source, settings)."""
    _write_json(Path(path) / EXPORT_MARKER, {"written_by": "lladax convert", **info})


def copy_tokenizer_files(src: str | os.PathLike, dst: str | os.PathLike) -> list[str]:
    """Copy the tokenizer files present in `src` to `dst`; returns their names."""
    src, dst = Path(src), Path(dst)
    copied = [n for n in TOKENIZER_FILES if (src / n).is_file()]
    for name in copied:
        shutil.copyfile(src / name, dst / name)
    return copied


def _tensor_reader(path: Path) -> tuple[list[str], Callable[[str], np.ndarray]]:
    """(names, read(name)) for one safetensors file."""
    infos = file_tensors(Path(path))
    return list(infos), lambda name: read_tensor(infos[name])
