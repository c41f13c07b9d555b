"""Hugging Face LLaDA checkpoints (config.json + safetensors) <-> lladax params, streaming.

Loading plans everything from config.json and the safetensors headers first (every name, shape
and dtype checked; one error lists all problems), then reads one HF tensor at a time, transposes
PyTorch [out, in] to [in, out], places it directly in its target sharding and writes it into its
slot of the stacked [layers, ...] leaf on device (a donated in-place update). Host memory is about
one HF tensor, whatever the checkpoint size; the params themselves live where the shardings put
them. Saving streams the other way: one layer slice at a time goes device -> host -> file.
The Orbax side of a conversion is `checkpoint.save_params` / `checkpoint.load_params`.
"""

from __future__ import annotations

import dataclasses
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

from lladax.config import ConfigError, ModelConfig
from lladax.files import atomic_write
from lladax.model.sharding import tree_shardings
from lladax.model.transformer import Params, abstract_params, param_logical_axes
from lladax.store.safetensors_io import (
    INDEX_NAME,
    SINGLE_NAME,
    CheckpointFormatError,
    ShardWriter,
    TensorInfo,
    aligned_empty,
    file_tensors,
    parse_size,
    plan_shards,
    read_tensor,
    read_transposed,
    scan_dir,
    write_safetensors,
)

PREFIX = "model.transformer."
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


# --- name mapping ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Leaf:
    """One lladax leaf: its path, HF name (with `{i}` for per-layer tensors) and layout maps."""

    path: tuple[str, ...]
    hf: str
    to_lladax: Callable[[np.ndarray], np.ndarray]  # HF [out, in] -> lladax (views, no copy)
    to_hf: Callable[[np.ndarray], np.ndarray]

    @property
    def stacked(self) -> bool:
        return "{i}" in self.hf

    @property
    def transposed(self) -> bool:
        """PyTorch Linear weights: lladax holds [in, ...] = the HF [out, in] transposed."""
        return not self.hf.endswith(("wte.weight", "norm.weight", "ln_f.weight"))


def _leaves(cfg: ModelConfig) -> list[_Leaf]:
    d, h, kv, hd = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    same = lambda w: w
    t = lambda w: w.T
    blk = PREFIX + "blocks.{i}."
    return [
        _Leaf(("wte",), PREFIX + "wte.weight", same, same),
        _Leaf(("blocks", "attn_norm", "weight"), blk + "attn_norm.weight", same, same),
        _Leaf(
            ("blocks", "q_proj"),
            blk + "q_proj.weight",
            lambda w: w.T.reshape(d, h, hd),
            lambda p: p.reshape(d, -1).T,
        ),
        _Leaf(
            ("blocks", "k_proj"),
            blk + "k_proj.weight",
            lambda w: w.T.reshape(d, kv, hd),
            lambda p: p.reshape(d, -1).T,
        ),
        _Leaf(
            ("blocks", "v_proj"),
            blk + "v_proj.weight",
            lambda w: w.T.reshape(d, kv, hd),
            lambda p: p.reshape(d, -1).T,
        ),
        _Leaf(
            ("blocks", "attn_out"),
            blk + "attn_out.weight",
            lambda w: w.T.reshape(h, hd, d),
            lambda p: p.reshape(-1, d).T,
        ),
        _Leaf(("blocks", "ff_norm", "weight"), blk + "ff_norm.weight", same, same),
        _Leaf(("blocks", "ff_proj"), blk + "ff_proj.weight", t, t),
        _Leaf(("blocks", "up_proj"), blk + "up_proj.weight", t, t),
        _Leaf(("blocks", "ff_out"), blk + "ff_out.weight", t, t),  # MLP down proj, not the head
        _Leaf(("ln_f", "weight"), PREFIX + "ln_f.weight", same, same),
        _Leaf(("lm_head",), PREFIX + "ff_out.weight", t, t),
    ]


def _get(tree: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """HF name -> HF shape of every tensor, in the hub's file order (layer by layer)."""
    abstract = abstract_params(cfg)
    per_leaf = {}
    for leaf in _leaves(cfg):
        shape = _get(abstract, leaf.path).shape
        inner = shape[1:] if leaf.stacked else shape
        per_leaf[leaf.hf] = leaf.to_hf(np.empty(inner, np.uint8)).shape
    top = {k: v for k, v in per_leaf.items() if "{i}" not in k}
    out = {PREFIX + "wte.weight": top.pop(PREFIX + "wte.weight")}
    for i in range(cfg.n_layers):
        out.update({k.format(i=i): v for k, v in per_leaf.items() if "{i}" in k})
    return out | top


# --- config ------------------------------------------------------------------------------------
def _special_tokens(path: Path) -> dict[str, int]:
    """Special ids from special_tokens.json, else from the tokenizer files (e.g. <|eot_id|>)."""
    special_file = path / "special_tokens.json"
    if special_file.exists():
        return json.loads(special_file.read_text())
    tok_file = path / "tokenizer.json"
    if tok_file.exists():
        added = json.loads(tok_file.read_text()).get("added_tokens", [])
        by_name = {t["content"]: t["id"] for t in added}
        if "<|eot_id|>" in by_name:
            return {"eot_token_id": by_name["<|eot_id|>"]}
    return {}


def load_config(path: str | os.PathLike, **overrides: Any) -> ModelConfig:
    """The ModelConfig of a HF LLaDA directory; rejects other architectures by name."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.exists():
        raise CheckpointFormatError(
            f"no config.json in {path}: pass a Hugging Face LLaDA checkpoint directory"
        )
    try:
        hf = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointFormatError(
            f"{config_file} is not valid JSON ({e}): fix or re-download it"
        ) from None
    model_type = hf.get("model_type")
    if (model_type not in (None, "llada")) or ("d_model" not in hf and "hidden_size" in hf):
        raise CheckpointFormatError(
            f"{config_file} is a {model_type!r} config (architectures "
            f"{hf.get('architectures')}), not a LLaDA config: lladax converts LLaDA checkpoints "
            "(model_type 'llada', e.g. GSAI-ML/LLaDA-8B-Base or -Instruct)"
        )
    try:
        return ModelConfig.from_hf_dict(hf, _special_tokens(path), **overrides)
    except ConfigError as e:
        raise ConfigError(f"{config_file}: {e}") from None


def _check(cfg: ModelConfig, infos: dict[str, TensorInfo], path: Path) -> None:
    """One error listing every missing, unexpected, mis-shaped or non-float tensor."""
    expected = hf_shapes(cfg)
    where = path / (INDEX_NAME if (path / INDEX_NAME).exists() else SINGLE_NAME)

    def listing(names: list[str]) -> str:
        return ", ".join(names[:6]) + (f" ... and {len(names) - 6} more" if len(names) > 6 else "")

    problems = []
    missing = [n for n in expected if n not in infos]
    unexpected = sorted(n for n in infos if n not in expected)
    if missing:
        problems.append(f"{len(missing)} missing: {listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {listing(unexpected)}")
    shapes = [
        f"{n} has shape {infos[n].shape} in {infos[n].file.name} but config.json implies {s}"
        for n, s in expected.items()
        if n in infos and infos[n].shape != s
    ]
    problems += shapes[:6]
    odd = [
        f"{n} is {i.dtype}, not a float"
        for n, i in infos.items()
        if n in expected and not jnp.issubdtype(i.dtype, jnp.floating)
    ]
    problems += odd[:3]
    if problems:
        raise CheckpointFormatError(
            f"{where} does not match {path / 'config.json'} (n_layers={cfg.n_layers}, d_model="
            f"{cfg.d_model}, vocab={cfg.vocab_size}): {'; '.join(problems)}. Use the config.json "
            "that came with these weights, and a LLaDA checkpoint (tensors named "
            f"{PREFIX}blocks.<i>.q_proj.weight, ...), not a converted or other-architecture one"
        )


def check_hf(path: str | os.PathLike) -> ModelConfig:
    """Everything `load_hf` checks before reading a weight (config.json, the safetensors headers,
    every name and shape): one error, nothing read beyond headers. Returns the ModelConfig."""
    path = Path(path)
    cfg = load_config(path)
    _check(cfg, scan_dir(path), path)
    return cfg


def stored_dtype(path: str | os.PathLike) -> np.dtype:
    """The dtype the checkpoint's tensors are stored in (float32 if they are mixed)."""
    dtypes = {i.dtype for i in scan_dir(Path(path)).values()}
    return dtypes.pop() if len(dtypes) == 1 else np.dtype(np.float32)


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
    _check(cfg, infos, path)
    shardings = _default_shardings(cfg, mesh) if shardings is None else shardings
    abstract = abstract_params(cfg)

    def host(name: str, leaf: _Leaf) -> np.ndarray:
        info = infos[name]
        if len(info.shape) == 2:  # every 2-D weight is transposed except the embedding
            hf_view = read_transposed(info, target).T if leaf.transposed else read_tensor(info)
        else:
            hf_view = read_tensor(info)
        if progress is not None:
            progress(info.nbytes)
        return leaf.to_lladax(hf_view.astype(target, copy=False))

    params: Params = {}
    for leaf in _leaves(cfg):
        shape, sharding = _get(abstract, leaf.path).shape, _get(shardings, leaf.path)
        if not leaf.stacked:
            _set(params, leaf.path, _put(host(leaf.hf, leaf), sharding))
            continue
        stacked = jax.jit(lambda s=shape: jnp.zeros(s, target), out_shardings=sharding)()
        update, layer_sharding = _update_fn(sharding), _layer_sharding(sharding)
        for i in range(cfg.n_layers):
            layer = _put(host(leaf.hf.format(i=i), leaf), layer_sharding)
            stacked = update(stacked, layer, jnp.int32(i))
            del layer
        _set(params, leaf.path, stacked)
    return cfg, params


def hf_tensors(
    cfg: ModelConfig, params: Params, dtype: Any = None
) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (HF name, host array in HF layout) in file order, one layer slice at a time."""
    by_name = {}
    for leaf in _leaves(cfg):
        by_name.update(
            {leaf.hf.format(i=i): (leaf, i) for i in range(cfg.n_layers)}
            if leaf.stacked
            else {leaf.hf: (leaf, None)}
        )
    for name in hf_shapes(cfg):
        leaf, i = by_name[name]
        value = _get(params, leaf.path)
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
    """Write a HF LLaDA directory: config.json (hub keys, architectures, auto_map),
    special_tokens.json and safetensors, sharded with an index above `max_shard_size`.

    max_shard_size: HF-style ("5GB" = 5·10⁹ bytes, "2GiB") or bytes; `max_shard_bytes` is the
      older spelling and wins when given. dtype: tensors' dtype in the files (default: the params').
    Each file is written to a temporary name and renamed when complete; host memory is about one
    tensor (the shard is streamed, its header written from the planned shapes).
    """
    if cfg.kind != "diffusion":
        raise ValueError(
            f"only LLaDA (diffusion) models export to the Hugging Face LLaDA format; "
            f"this one is kind={cfg.kind!r} (the autoregressive baseline, whose "
            "causal attention LLaDA's remote code would not apply)"
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


__all__ = [
    "EXPORT_MARKER",
    "CheckpointFormatError",
    "ConfigError",
    "check_hf",
    "copy_tokenizer_files",
    "hf_shapes",
    "hf_tensors",
    "load_config",
    "load_hf",
    "save_hf",
    "stored_dtype",
    "write_export_marker",
    "write_safetensors",
]
