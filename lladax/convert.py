"""Hugging Face LLaDA checkpoints (config.json + safetensors) <-> lladax params.

The safetensors files are read through a memory map one tensor at a time, so converting holds at
most one HF tensor plus the stacked lladax leaf being filled. Both the single-file layout and the
sharded layout (`model.safetensors.index.json`) are read; `save_hf` writes either.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from lladax.config import ConfigError, ModelConfig
from lladax.model import Params, abstract_params

PREFIX = "model.transformer."
_ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}
_ST_NAMES = {np.dtype(v): k for k, v in _ST_DTYPES.items()}


class CheckpointFormatError(ValueError):
    """A checkpoint file is missing, corrupt or does not match its config."""


# --- safetensors, read and written directly (bf16 included, no framework needed) ---------------
def read_safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """Return (header without __metadata__, byte offset of the data section)."""
    try:
        with open(path, "rb") as f:
            raw_len = f.read(8)
            if len(raw_len) != 8:
                raise CheckpointFormatError(f"{path} is truncated (no safetensors header): "
                                            "re-download or re-convert it")
            (n,) = struct.unpack("<Q", raw_len)
            if n > os.path.getsize(path) - 8:
                raise CheckpointFormatError(f"{path} is corrupt (header length {n} exceeds the "
                                            "file): re-download or re-convert it")
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise CheckpointFormatError(f"safetensors file {path} not found: check the checkpoint "
                                    "directory (the index names a missing shard?)") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointFormatError(f"{path} is corrupt (unreadable safetensors header): "
                                    "re-download or re-convert it") from None
    header.pop("__metadata__", None)
    return header, 8 + n


def _tensor_reader(path: Path) -> tuple[list[str], Callable[[str], np.ndarray]]:
    header, start = read_safetensors_header(path)
    size = os.path.getsize(path)
    mm = np.memmap(path, dtype=np.uint8, mode="r") if size > start else None

    def read(name: str) -> np.ndarray:
        info = header[name]
        dtype = _ST_DTYPES.get(info["dtype"])
        if dtype is None:
            raise CheckpointFormatError(f"{path}: tensor {name} has unsupported dtype "
                                        f"{info['dtype']}")
        begin, end = info["data_offsets"]
        expected = int(np.prod(info["shape"], dtype=np.int64)) * np.dtype(dtype).itemsize
        if end - begin != expected or start + end > size or mm is None:
            raise CheckpointFormatError(f"{path} is corrupt or truncated at tensor {name}: "
                                        "re-download or re-convert it")
        return mm[start + begin:start + end].view(dtype).reshape(info["shape"])

    return list(header), read


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """Write a safetensors file atomically (temporary file, then rename)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, arr in tensors.items():
        nbytes = arr.size * arr.dtype.itemsize
        header[name] = {"dtype": _ST_NAMES[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for arr in tensors.values():
            f.write(np.ascontiguousarray(arr).tobytes())
    os.replace(tmp, path)


# --- name mapping ------------------------------------------------------------------------------
def _layer_map(cfg: ModelConfig) -> dict[str, tuple[str, Callable[[np.ndarray], np.ndarray],
                                                  Callable[[np.ndarray], np.ndarray]]]:
    """lladax block leaf -> (HF suffix, hf->lladax, lladax->hf) for one layer."""
    d, h, kv, hd = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    same = lambda w: w
    return {
        "attn_norm": ("attn_norm.weight", same, same),
        "ff_norm": ("ff_norm.weight", same, same),
        "q_proj": ("q_proj.weight", lambda w: w.T.reshape(d, h, hd), lambda p: p.reshape(d, -1).T),
        "k_proj": ("k_proj.weight", lambda w: w.T.reshape(d, kv, hd),
                   lambda p: p.reshape(d, -1).T),
        "v_proj": ("v_proj.weight", lambda w: w.T.reshape(d, kv, hd),
                   lambda p: p.reshape(d, -1).T),
        "attn_out": ("attn_out.weight", lambda w: w.T.reshape(h, hd, d),
                     lambda p: p.reshape(-1, d).T),
        "ff_proj": ("ff_proj.weight", lambda w: w.T, lambda p: p.T),
        "up_proj": ("up_proj.weight", lambda w: w.T, lambda p: p.T),
        "ff_out": ("ff_out.weight", lambda w: w.T, lambda p: p.T),
    }


def _leaf(tree: Params, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _leaf_path(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", k)) for k in path)


_TOP = {"wte": ("wte.weight", False), "ln_f": ("ln_f.weight", False),
        "lm_head": ("ff_out.weight", True)}


def hf_tensors(cfg: ModelConfig, params: Params) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (HF name, array in HF layout) for every tensor of the checkpoint."""
    for leaf, (suffix, transpose) in _TOP.items():
        arr = np.asarray(_leaf(params, (leaf, "weight") if leaf == "ln_f" else (leaf,)))
        yield PREFIX + suffix, (arr.T if transpose else arr)
    for leaf, (suffix, _, to_hf) in _layer_map(cfg).items():
        path = ("blocks", leaf, "weight") if leaf.endswith("norm") else ("blocks", leaf)
        stacked = np.asarray(_leaf(params, path))
        for i in range(cfg.n_layers):
            yield f"{PREFIX}blocks.{i}.{suffix}", np.ascontiguousarray(to_hf(stacked[i]))


# --- load / save -------------------------------------------------------------------------------
def _shard_files(path: Path) -> dict[str, Path]:
    index = path / "model.safetensors.index.json"
    single = path / "model.safetensors"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError):
            raise CheckpointFormatError(f"{index} is corrupt (no weight_map): re-download "
                                        "it") from None
        return {name: path / file for name, file in weight_map.items()}
    if single.exists():
        header, _ = read_safetensors_header(single)
        return dict.fromkeys(header, single)
    raise CheckpointFormatError(
        f"no model.safetensors or model.safetensors.index.json in {path}: point at a Hugging "
        "Face LLaDA directory (convert .bin checkpoints to safetensors first)")


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
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.exists():
        raise CheckpointFormatError(f"no config.json in {path}: pass a Hugging Face LLaDA "
                                    "checkpoint directory")
    try:
        hf = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointFormatError(f"{config_file} is not valid JSON ({e}): fix or "
                                    "re-download it") from None
    return ModelConfig.from_hf_dict(hf, _special_tokens(path), **overrides)


def load_hf(path: str | os.PathLike, dtype: Any = jnp.float32, *,
            shardings: Any = None) -> tuple[ModelConfig, Params]:
    """Load a HF LLaDA directory -> (cfg, params). Params are stored (and computed) in `dtype`.

    `shardings` (a pytree of `jax.sharding.Sharding` matching the params) places each leaf
    directly on a mesh.
    """
    path = Path(path)
    name = jnp.dtype(dtype).name
    cfg = load_config(path, dtype=name, param_dtype=name)
    files = _shard_files(path)
    readers: dict[Path, Callable[[str], np.ndarray]] = {}

    def read(hf_name: str, expected: tuple[int, ...]) -> np.ndarray:
        if hf_name not in files:
            raise CheckpointFormatError(f"tensor {hf_name} is missing from the checkpoint in "
                                        f"{path}: is it a LLaDA checkpoint with n_layers="
                                        f"{cfg.n_layers}?")
        file = files[hf_name]
        if file not in readers:
            names, readers[file] = _tensor_reader(file)
            missing = [n for n, f in files.items() if f == file and n not in names]
            if missing:
                raise CheckpointFormatError(f"{file} lacks {missing[0]} listed in the index: "
                                            "the shard is corrupt or from another checkpoint")
        arr = readers[file](hf_name)
        if tuple(arr.shape) != expected:
            raise CheckpointFormatError(
                f"tensor {hf_name} has shape {tuple(arr.shape)} but config.json implies "
                f"{expected}: config.json does not match the weights (vocab or shape mismatch)")
        return arr

    target = jnp.dtype(dtype)
    abstract = abstract_params(cfg)
    layer_map = _layer_map(cfg)
    out: dict[tuple[str, ...], np.ndarray] = {}
    for leaf, (suffix, transpose) in _TOP.items():
        path_ = (leaf, "weight") if leaf == "ln_f" else (leaf,)
        shape = _leaf(abstract, path_).shape
        arr = read(PREFIX + suffix, shape[::-1] if transpose else shape)
        out[path_] = (arr.T if transpose else arr).astype(target)
    for leaf, (suffix, to_lladax, to_hf) in layer_map.items():
        path_ = ("blocks", leaf, "weight") if leaf.endswith("norm") else ("blocks", leaf)
        shape = _leaf(abstract, path_).shape
        stacked = np.empty(shape, dtype=target)
        hf_shape = to_hf(np.empty(shape[1:], np.uint8)).shape
        for i in range(cfg.n_layers):
            stacked[i] = to_lladax(read(f"{PREFIX}blocks.{i}.{suffix}", hf_shape))
        out[path_] = stacked

    def place(kpath, _abstract_leaf, sharding=None):
        arr = out[_leaf_path(kpath)]
        return jax.device_put(arr, sharding) if sharding is not None else jnp.asarray(arr)

    if shardings is None:
        params = jax.tree_util.tree_map_with_path(place, abstract)
    else:
        params = jax.tree_util.tree_map_with_path(place, abstract, shardings)
    return cfg, params


def save_hf(path: str | os.PathLike, cfg: ModelConfig, params: Params, *,
            max_shard_bytes: int = 5 * 2**30) -> None:
    """Write config.json, special_tokens.json and safetensors (sharded above `max_shard_bytes`)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    leaves = jax.tree.leaves(params)
    dtype_name = np.dtype(leaves[0].dtype).name if leaves else cfg.param_dtype
    hf_config = cfg.to_hf_dict() | {"torch_dtype": dtype_name}
    shards: list[dict[str, np.ndarray]] = [{}]
    sizes = [0]
    for name, arr in hf_tensors(cfg, params):
        if sizes[-1] and sizes[-1] + arr.nbytes > max_shard_bytes:
            shards.append({})
            sizes.append(0)
        shards[-1][name] = arr
        sizes[-1] += arr.nbytes
    if len(shards) == 1:
        write_safetensors(path / "model.safetensors", shards[0])
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            write_safetensors(path / file, shard)
            weight_map.update(dict.fromkeys(shard, file))
        index = {"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}
        (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (path / "config.json").write_text(json.dumps(hf_config, indent=2))
    (path / "special_tokens.json").write_text(json.dumps(cfg.special_tokens(), indent=2))


__all__ = ["CheckpointFormatError", "ConfigError", "load_config", "load_hf", "save_hf"]
