"""What a lladax checkpoint stores and how it is checked: the per-process data-iterator item,
position-sensitive per-array checksums, the comparison of a stored tree (and config) with a
target, what a resume may change, and the run directory's other files (metrics.jsonl, written
so that a kill or a resume never leaves a torn or repeated record).

Orbax's array files carry no checksum of the data (a flipped bit restores as silent garbage), so
`checkpoint.save` records `checksums` of every array in the step's JSON meta and every restore
recomputes and compares them. Used by `lladax.checkpoint` and `lladax.loop`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from lladax.config import ModelConfig

log = logging.getLogger("lladax.train")


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


# --- the per-process data-iterator item ------------------------------------------------------
class DataStateHandler(ocp.CheckpointHandler):
    """Each process writes its own iterator state (JSON) as `process_<i>-of-<n>.json`."""

    def save(self, directory: epath.Path, args: DataStateSave) -> None:
        name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        (epath.Path(directory) / name).write_text(json.dumps(args.state))

    def restore(self, directory: epath.Path, args: DataStateRestore | None = None
                ) -> dict[str, Any]:
        """{"state": this process's state or None, "processes": how many processes saved}."""
        directory = epath.Path(directory)
        files = sorted(p.name for p in directory.iterdir() if p.name.startswith("process_"))
        saved = int(files[0].rsplit("-of-", 1)[1].removesuffix(".json")) if files else 0
        own = directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        state = json.loads(own.read_text()) if own.exists() else None
        return {"state": state, "processes": saved}

    def metadata(self, directory: epath.Path) -> None:
        return None

    def finalize(self, directory: epath.Path) -> None:
        pass

    def close(self) -> None:
        pass


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
    state: Any


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
    pass


# --- the other files of a run directory --------------------------------------------------------
def atomic_write(path: epath.Path, payload: bytes) -> None:
    """Write via a temporary file and a rename (a kill leaves the old file or the new one);
    object stores replace an object atomically by themselves."""
    if "://" in os.fspath(path):
        path.write_bytes(payload)
        return
    fd, tmp = tempfile.mkstemp(dir=os.fspath(path.parent), prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.chmod(tmp, 0o644)
        os.replace(tmp, os.fspath(path))
    except BaseException:
        os.unlink(tmp)
        raise


class MetricsFile:
    """Appends JSON lines to `workdir/metrics.jsonl` (process 0 only). Object stores cannot
    append, so there the file is rewritten whole at each flush."""

    def __init__(self, path: epath.Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled
        self.local = "://" not in os.fspath(path)
        self.lines: list[str] = []
        if enabled and not self.local and path.exists():
            self.lines = path.read_text().splitlines(keepends=True)

    def resume(self, step: int) -> float | None:
        """On resuming at `step`: drop the records of later steps (logged after the last
        checkpoint by the interrupted run; they are redone now) and a torn line (a kill during a
        write), so every step appears once. Returns the last eval loss logged up to `step`."""
        if not self.enabled or not self.path.exists():
            return None
        lines = self.lines if not self.local else self.path.read_text().splitlines(keepends=True)
        keep, last_eval = [], None
        for line in lines:
            try:
                record = json.loads(line) if line.endswith("\n") else None
            except ValueError:
                record = None
            if isinstance(record, dict) and int(record.get("step", 0)) <= step:
                keep.append(line)
                last_eval = record.get("eval_loss", last_eval)
        if len(keep) != len(lines):
            log.info("%s: dropped %d record(s) past step %d or torn by a kill (those steps are "
                     "redone)", self.path, len(lines) - len(keep), step)
            atomic_write(self.path, "".join(keep).encode())
            self.lines = keep if not self.local else []
        return last_eval

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        line = json.dumps(record) + "\n"
        if self.local:
            with open(os.fspath(self.path), "a") as f:
                f.write(line)
        else:
            self.lines.append(line)
            self.path.write_text("".join(self.lines))


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
    mixed = (bits * jnp.uint32(0x9E3779B1)) ^ (index * jnp.uint32(0x85EBCA77) +
                                               jnp.uint32(0x165667B1))
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


def compare_structure(item: str, saved_md: Any, like: Any, where: str, meta: dict[str, Any],
             model_cfg: ModelConfig | None) -> set[str]:
    """Raise CheckpointMismatchError if the stored item's paths/shapes differ from `like`;
    return the paths whose dtype differs (restored with a cast, so not checksum-verified)."""
    tree = getattr(saved_md, "tree", saved_md)
    saved = {_path_str(p): (tuple(m.shape), jnp.dtype(m.dtype).name) for p, m in
             jax.tree_util.tree_flatten_with_path(tree)[0]}
    wanted = {_path_str(p): _stored_signature(x) for p, x in
              jax.tree_util.tree_flatten_with_path(like)[0]}
    problems = [f"{item}/{k} is missing from the checkpoint" for k in wanted if k not in saved]
    problems += [f"{item}/{k} is in the checkpoint but not in this model" for k in saved
                 if k not in wanted]
    problems += [f"{item}/{k} has shape {list(saved[k][0])} in the checkpoint but "
                 f"{list(wanted[k][0])} here" for k in wanted
                 if k in saved and saved[k][0] != wanted[k][0]]
    if problems:
        fields = ""
        if model_cfg is not None and isinstance(meta.get("model"), dict):
            now = dataclasses.asdict(model_cfg)
            diff = [f"{k} {v} vs {now[k]}" for k, v in meta["model"].items()
                    if k in now and v != now[k] and k not in ("dtype", "param_dtype",
                                                              "remat_policy", "attention_impl")]
            fields = f" (model config differs: {', '.join(diff)})" if diff else ""
        more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
        raise CheckpointMismatchError(
            f"checkpoint {where} was written for a different model: {problems[0]}{more}{fields}; "
            "train with the config it was saved with, or use a new workdir")
    return {k for k in wanted if saved[k][1] != wanted[k][1]}


# --- what a resume may change ------------------------------------------------------------------
# Model fields that change only how the same function is computed (or only the initialisation, or
# the longest context allowed): a resume may change them. Every other field changes what the
# network computes from the same weights (rope_theta, rms_norm_eps, the special token ids, the
# head split, ...): resuming with another value would silently train a different model.
HOW_FIELDS = ("dtype", "param_dtype", "remat_policy", "attention_impl", "init_std", "max_seq_len")
# Run-config keys whose change on resume is harmless (train.seed only seeds the initial params;
# train.steps is reported on its own), and the sections compared (eval, log, checkpoint and mesh
# never change the trajectory).
_RUN_IGNORED = ("train.seed", "train.steps")
_RUN_SECTIONS = ("data", "train")


def _changed(saved: dict[str, Any], now: dict[str, Any], prefix: str) -> list[tuple[str, Any, Any]]:
    return [(f"{prefix}.{k}", saved[k], now[k]) for k in now
            if k in saved and saved[k] != now[k]]


def model_changes(saved: dict[str, Any], now: ModelConfig
                  ) -> tuple[list[tuple[str, Any, Any]], list[tuple[str, Any, Any]]]:
    """(changes that alter the computed function, harmless ones) between a checkpoint's
    `meta["model"]` and `now`, as (model.field, saved, now) triples. `kind` is left out (the
    restore names it on its own)."""
    diff = [c for c in _changed(saved, dataclasses.asdict(now), "model") if c[0] != "model.kind"]
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
            f"with --config.checkpoint.init_from={run_dir}")


def run_changes(saved_run: dict[str, Any], now_run: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(section.key, saved, now) of the data/train settings a resume changes (other than
    train.steps and train.seed): the run goes on, but not as an uninterrupted one would."""
    out: list[tuple[str, Any, Any]] = []
    for section in _RUN_SECTIONS:
        out += _changed(saved_run.get(section) or {}, now_run.get(section) or {}, section)
    return [c for c in out if c[0] not in _RUN_IGNORED]


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
            text = f"{parts[0]}{f' reading {array.group(1)}' if array else ''}: " \
                   f"{': '.join(inner or parts[-1:])}"
        return text.strip()[:200]

    text = f"{type(e).__name__}: {first(e)}" if first(e) else type(e).__name__
    cause = e.__cause__ or e.__context__
    if cause is not None and first(cause) and first(cause) not in text:
        text += f" ({type(cause).__name__}: {first(cause)})"
    return text


def check_resume(workdir: epath.Path, latest: int, steps: int, stop_after: int | None,
                 tokenizer_file: tuple[str, bytes], tokenizer: str) -> None:
    """Refuse a resume of `workdir` (newest checkpoint: step `latest`) that cannot go on as
    asked: past `train.steps`, before `--stop-after`, or with another tokenizer than the one
    the run copied in (`tokenizer_file` = (name, bytes) of the configured `tokenizer`)."""
    if latest > steps:
        raise CheckpointError(f"workdir {workdir} holds a checkpoint at step {latest}, past "
                              f"train.steps={steps}: pass --config.train.steps above {latest} "
                              "to train on, or a new --workdir")
    if stop_after is not None and stop_after < latest:
        raise CheckpointError(f"--stop-after {stop_after} is before the checkpoint at step "
                              f"{latest} in {workdir}: pass a later step, or a new --workdir")
    name, payload = tokenizer_file
    mine = workdir / name
    other = workdir / ("tokenizer.json" if name == "tokenizer.model" else "tokenizer.model")
    differs = mine.read_bytes() != payload if mine.exists() else other.exists()
    if differs:
        raise CheckpointError(
            f"workdir {workdir} was trained with another tokenizer than data.tokenizer="
            f"{tokenizer!r} (its {mine.name if mine.exists() else other.name} differs): set "
            "--config.data.tokenizer back, or use a new --workdir")


def resume_changes(meta: dict[str, Any], now: ModelConfig, run: dict[str, Any]
                   ) -> tuple[str | None, str | None]:
    """(a note on a changed train.steps, a warning naming every other changed setting) of a
    resume from a checkpoint with `meta` as the model `now` with run config `run`; None when
    nothing changed. Changes that alter the computed function were refused on restore."""
    saved_run = meta.get("run") or {}
    was, steps = (saved_run.get("train") or {}).get("steps"), (run.get("train") or {}).get("steps")
    steps_line = None if was is None or was == steps else \
        f"with train.steps={steps} (was {was}): the learning-rate schedule follows the new length"
    changes = model_changes(meta.get("model") or {}, now)[1] + run_changes(saved_run, run)
    changes_line = None if not changes else (
        f"with changed settings ({', '.join(f'{k} {a!r} -> {b!r}' for k, a, b in changes)}): "
        "the run continues with the new values, so it will not match an uninterrupted run")
    return steps_line, changes_line
