"""How a lladax checkpoint is checked against what loads it: the errors, position-sensitive
per-array checksums, the comparison of a stored tree with a target, and the model fields a resume
may change (and those it may not).

Orbax's array files carry no checksum of the data (a flipped bit restores as silent garbage), so
`checkpoint.save` records `checksums` of every array in the step's JSON meta and every restore
recomputes and compares them. Used by the store's `layout`, `checkpoint` and
`params_checkpoint`, and by the training loop and run directory (`lladax.train`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from lladax.config import ModelConfig


class CheckpointError(ValueError):
    """A run directory or checkpoint is missing or unreadable."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint was written for a different model (shapes or structure differ)."""


class CheckpointWarning(UserWarning):
    """A damaged checkpoint was skipped in favour of an earlier one."""


def as_path(path: str | os.PathLike) -> epath.Path:
    """An `epath.Path` (local paths made absolute; `gs://...` and other URLs kept as they are)."""
    text = os.fspath(path)
    return epath.Path(text if "://" in text else os.path.abspath(os.path.expanduser(text)))


# --- checksums ---------------------------------------------------------------------------------
def _path_str(path: tuple[Any, ...]) -> str:
    def key(k: Any) -> str:
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                return str(getattr(k, attr))
        return str(k)

    return "/".join(key(k) for k in path)


def _leaf_checksum(x: jax.Array) -> jax.Array:
    """[] uint32: Σ (bits·K₁ ⊕ (index·K₂ + K₃)) mod 2³², exact under any sharding; any change of
    a single element changes it, and so does moving elements."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    bits = jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{8 * x.dtype.itemsize}"))
    bits = bits.astype(jnp.uint32)
    index, stride = jnp.zeros(x.shape, jnp.uint32), 1
    for dim in reversed(range(x.ndim)):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, x.shape, dim) * jnp.uint32(stride)
        stride = stride * x.shape[dim] % 2**32
    mixed = (bits * jnp.uint32(0x9E3779B1)) ^ (
        index * jnp.uint32(0x85EBCA77) + jnp.uint32(0x165667B1)
    )
    return jnp.sum(mixed, dtype=jnp.uint32)


@jax.jit
def _tree_checksums(tree: Any) -> Any:
    return jax.tree.map(_leaf_checksum, tree)


def checksums(tree: Any) -> dict[str, int]:
    """{"a/b/c": uint32 checksum} of every array leaf of `tree` (computed on device)."""
    values = jax.tree_util.tree_flatten_with_path(_tree_checksums(tree))[0]
    return {_path_str(p): int(np.asarray(v)) for p, v in values}


def _stored_signature(x: Any) -> tuple[tuple[int, ...], str]:
    """(shape, dtype) as Orbax stores a leaf (typed PRNG keys as their uint32 key data)."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.eval_shape(jax.random.key_data, x)
    return tuple(x.shape), jnp.dtype(x.dtype).name


def compare_structure(
    item: str,
    saved_md: Any,
    like: Any,
    where: str,
    meta: dict[str, Any],
    model_cfg: ModelConfig | None,
) -> set[str]:
    """Raise CheckpointMismatchError if the stored item's paths/shapes differ from `like`;
    return the paths whose dtype differs (restored with a cast, so not checksum-verified)."""
    tree = getattr(saved_md, "tree", saved_md)
    saved = {
        _path_str(p): (tuple(m.shape), jnp.dtype(m.dtype).name)
        for p, m in jax.tree_util.tree_flatten_with_path(tree)[0]
    }
    wanted = {
        _path_str(p): _stored_signature(x) for p, x in jax.tree_util.tree_flatten_with_path(like)[0]
    }
    problems = [f"{item}/{k} is missing from the checkpoint" for k in wanted if k not in saved]
    problems += [
        f"{item}/{k} is in the checkpoint but not in this model" for k in saved if k not in wanted
    ]
    problems += [
        f"{item}/{k} has shape {list(saved[k][0])} in the checkpoint but {list(wanted[k][0])} here"
        for k in wanted
        if k in saved and saved[k][0] != wanted[k][0]
    ]
    if problems:
        fields = ""
        if model_cfg is not None and isinstance(meta.get("model"), dict):
            now = dataclasses.asdict(model_cfg)
            diff = [
                f"{k} {v} vs {now[k]}"
                for k, v in meta["model"].items()
                if k in now
                and v != now[k]
                and k not in ("dtype", "param_dtype", "remat_policy", "attention_impl")
            ]
            fields = f" (model config differs: {', '.join(diff)})" if diff else ""
        more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
        raise CheckpointMismatchError(
            f"checkpoint {where} was written for a different model: {problems[0]}{more}{fields}; "
            "train with the config it was saved with, or use a new workdir"
        )
    return {k for k in wanted if saved[k][1] != wanted[k][1]}


def describe_error(e: BaseException) -> str:
    """One short line for an exception from Orbax/TensorStore reading a damaged step: no
    `[tensorstore_spec=...]` dump and no `See full TensorStore details: <spec>` suffix; a
    TensorStore status chain is cut to its code, the array and its innermost cause; the cause of
    a wrapping exception (Orbax's `Encountered error while reading ...`) is appended."""

    def first(x: BaseException) -> str:
        lines = str(x).strip().splitlines()
        text = lines[0] if lines else ""
        for cut in (" [tensorstore_spec", ". See full TensorStore", " See full TensorStore"):
            text = text.split(cut)[0]
        parts = text.split(": ")
        if len(parts) > 2 and re.fullmatch(r"[A-Z_]+", parts[0]):  # a TensorStore status chain
            array = re.search(r'"([^"/]+)/\.z', text)
            inner = [p for p in parts[1:] if not re.match(r"Error (opening|reading) ", p)]
            text = (
                f"{parts[0]}{f' reading {array.group(1)}' if array else ''}: "
                f"{': '.join(inner or parts[-1:])}"
            )
        return text.strip()[:200]

    text = f"{type(e).__name__}: {first(e)}" if first(e) else type(e).__name__
    cause = e.__cause__ or e.__context__
    if cause is not None and first(cause) and first(cause) not in text:
        text += f" ({type(cause).__name__}: {first(cause)})"
    return text


# --- what a resume may change in the model config ---------------------------------------------
# Model fields that change only how the same function is computed (or only the initialisation, or
# the longest context allowed): a resume may change them. Every other field changes what the
# network computes from the same weights (rope_theta, rms_norm_eps, the special token ids, the
# head split, ...): resuming with another value would silently train a different model.
HOW_FIELDS = ("dtype", "param_dtype", "remat_policy", "attention_impl", "init_std", "max_seq_len")


def changed_fields(
    saved: dict[str, Any], now: dict[str, Any], prefix: str
) -> list[tuple[str, Any, Any]]:
    """(prefix.key, saved, now) for each key of `now` that `saved` holds with another value."""
    return [(f"{prefix}.{k}", saved[k], now[k]) for k in now if k in saved and saved[k] != now[k]]


def model_changes(
    saved: dict[str, Any], now: ModelConfig
) -> tuple[list[tuple[str, Any, Any]], list[tuple[str, Any, Any]]]:
    """(changes that alter the computed function, harmless ones) between a checkpoint's
    `meta["model"]` and `now`, as (model.field, saved, now) triples. `kind` is left out (the
    restore names it on its own)."""
    diff = [
        c for c in changed_fields(saved, dataclasses.asdict(now), "model") if c[0] != "model.kind"
    ]
    benign = [c for c in diff if c[0].split(".")[1] in HOW_FIELDS]
    return [c for c in diff if c not in benign], benign


def check_model_fields(meta: dict[str, Any], now: ModelConfig, where: str) -> None:
    """Raise CheckpointMismatchError if resuming `where` as `now` would change the function the
    saved weights compute (same shapes, other rope_theta / norm eps / token ids / heads)."""
    breaking, _ = model_changes(meta.get("model") or {}, now)
    if breaking:
        what = ", ".join(f"{k}={a!r} there, {b!r} now" for k, a, b in breaking)
        back = " ".join(f"--config.{k}={a!r}" for k, a, _ in breaking)
        run_dir = epath.Path(where).parent.parent
        raise CheckpointMismatchError(
            f"checkpoint {where} was trained with other model numerics ({what}): resuming would "
            f"change what its weights compute; set them back ({back}) or start a new workdir "
            f"with --config.checkpoint.init_from={run_dir}"
        )
