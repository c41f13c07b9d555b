"""Orbax checkpoints of a training run, and the params-only restore used for inference.

Layout of a run directory (`log.workdir`; a local path or e.g. `gs://bucket/run`):
  checkpoints/<step>/params   model params (restorable alone, onto any mesh)
  checkpoints/<step>/train    the rest of the TrainState: optimizer state, step, rng, guard
  checkpoints/<step>/ema      f32 EMA of the params (only when train.ema_decay > 0)
  checkpoints/<step>/data     each process's data-iterator position, process_<i>-of-<n>.json
  checkpoints/<step>/meta     JSON: model config, run config, tokenizer, per-array checksums
  corrupt_checkpoints/<step>  steps found damaged on resume, moved aside (never deleted)
  tokenizer.model             the tokenizer the run was trained with (copied in)
  metrics.jsonl               one JSON line per logged step (process 0)

Orbax writes each step into a temporary directory and renames it (or, on object stores, writes
a commit file) when every item is complete, so a crash during a save never replaces the
previous good checkpoint. Array files carry no checksum of their own (a flipped bit restores as
silent garbage), so `save` records a position-sensitive checksum of every array in `meta` and
every restore verifies it; a damaged or unreadable step is reported with a warning and the one
before it is used (keep >= 2).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from lladax.config import ModelConfig
from lladax.model import transformer
from lladax.store.data_state import DataStateHandler, DataStateRestore, DataStateSave
from lladax.store.integrity import (
    CheckpointError,
    CheckpointMismatchError,
    CheckpointWarning,
    as_path,
    check_model_fields,
    checksums,
    compare_structure,
    describe_error,
)

ITEMS = ("params", "train", "ema", "data", "meta")


class _DropReadOnlyNotice(logging.Filter):
    """Orbax warns `Given directory is read only=...` whenever a read-only manager opens, i.e. on
    every `lladax sample` / eval: reading a run is not worth a warning. Only that one message
    is dropped; every other absl warning still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Given directory is read only")


if not any(isinstance(f, _DropReadOnlyNotice) for f in logging.getLogger("absl").filters):
    logging.getLogger("absl").addFilter(_DropReadOnlyNotice())


def check_writable(run_dir: str | os.PathLike) -> epath.Path:
    """Create `run_dir` and prove it writable (each process writes a probe file), or raise."""
    d = as_path(run_dir)
    probe = d / f".lladax_write_test_{jax.process_index()}_{os.getpid()}"
    try:
        d.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except Exception as e:  # PermissionError, read-only FS, object-store auth errors, ...
        reason = getattr(e, "strerror", None) or f"{type(e).__name__}: {str(e)[:120]}"
        raise CheckpointError(
            f"output directory {d} is not writable ({reason}): pass a writable "
            "--workdir (or --config.log.workdir)"
        ) from None
    return d


def _handlers(concurrent_gb: int | None = None) -> dict[str, ocp.CheckpointHandler]:
    limits = (
        {}
        if concurrent_gb is None
        else dict(save_concurrent_gb=concurrent_gb, restore_concurrent_gb=concurrent_gb)
    )
    return {
        "params": ocp.StandardCheckpointHandler(**limits),
        "train": ocp.StandardCheckpointHandler(**limits),
        "ema": ocp.StandardCheckpointHandler(**limits),
        "data": DataStateHandler(),
        "meta": ocp.JsonCheckpointHandler(),
    }


def manager(
    run_dir: str | os.PathLike,
    keep: int = 2,
    *,
    read_only: bool = False,
    concurrent_gb: int | None = None,
) -> ocp.CheckpointManager:
    """A CheckpointManager for `run_dir/checkpoints` keeping the newest `keep` steps.

    Saves are asynchronous (`save` returns once the arrays are copied to host memory). Temporary
    directories left by a killed save are removed when a writable manager opens. `concurrent_gb`
    bounds the bytes Orbax stages on the host at once (default: Orbax's, 96 GB) — conversion
    sets it low to keep peak memory near one shard.
    """
    # (read-only: no keep limit and no save interval, which Orbax would warn about resetting)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else keep,
        save_interval_steps=0 if read_only else 1,
        create=not read_only,
        read_only=read_only,
        cleanup_tmp_directories=not read_only,
    )
    return ocp.CheckpointManager(
        as_path(run_dir) / "checkpoints", options=options, item_handlers=_handlers(concurrent_gb)
    )


# --- save / restore a TrainState ---------------------------------------------------------------
def state_items(state: Any) -> dict[str, Any]:
    """The pytrees saved as separate items: params, train (every other field), ema if on."""
    train = {
        f.name: getattr(state, f.name)
        for f in dataclasses.fields(state)
        if f.name not in ("params", "ema")
    }
    items = {"params": state.params, "train": train}
    if getattr(state, "ema", None) is not None:
        items["ema"] = state.ema
    return items


def save(
    mgr: ocp.CheckpointManager,
    state: Any,
    meta: dict[str, Any],
    *,
    data_state: Any = None,
    force: bool = False,
) -> bool:
    """Start an asynchronous save of a TrainState at `state.step` (returns once the arrays are
    on the host; `mgr.wait_until_finished()` waits for the commit). `data_state` is this
    process's data-iterator state (JSON-able)."""
    items = state_items(state)
    meta = meta | {
        "checksums": {name: checksums(tree) for name, tree in items.items()},
        "processes": jax.process_count(),
    }
    args: dict[str, Any] = {name: ocp.args.StandardSave(tree) for name, tree in items.items()}
    args["meta"] = ocp.args.JsonSave(meta)
    if data_state is not None:
        args["data"] = DataStateSave(data_state)
    return mgr.save(int(state.step), args=ocp.args.Composite(**args), force=force)


def _abstract(tree: Any) -> Any:
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        tree,
    )


def _all_processes_ok(ok: bool) -> bool:
    """True only if `ok` on every process (a damaged shard may be seen by one host only)."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.asarray(ok, np.int32))))


def _step_dir(mgr: ocp.CheckpointManager, step: int) -> epath.Path:
    return epath.Path(mgr.directory) / str(step)


def _warn(message: str) -> None:
    warnings.warn(message, CheckpointWarning, stacklevel=3)


@dataclasses.dataclass
class Restored:
    state: Any  # the TrainState, placed like the target
    step: int
    meta: dict[str, Any]  # the JSON meta of the step
    data_state: Any  # this process's data-iterator state, or None (absent / other layout)


def _restore_step(
    mgr: ocp.CheckpointManager, like_state: Any, step: int, model_cfg: ModelConfig | None
) -> Restored:
    where = str(_step_dir(mgr, step))
    items_like = state_items(like_state)
    present = {name for name in ITEMS if (_step_dir(mgr, step) / name).exists()}
    if "train" not in present and "params" in present:
        raise CheckpointMismatchError(
            f"checkpoint {where} holds params only (a converted or exported model), not a "
            "training state: start a new workdir with "
            f"--config.checkpoint.init_from={epath.Path(mgr.directory).parent}"
        )
    meta = mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    saved_kind = meta.get("model", {}).get("kind", "diffusion")
    if model_cfg is not None and saved_kind != model_cfg.kind:  # same shapes, other objective
        raise CheckpointMismatchError(
            f"checkpoint {where} is a kind={saved_kind!r} model but this run is "
            f"kind={model_cfg.kind!r}: use a new workdir (with checkpoint.init_from to start from "
            "these params) or set --config.model.kind back"
        )
    saved_md = mgr.item_metadata(step)
    recast: dict[str, set[str]] = {}
    for name, like in items_like.items():
        if name in present:
            recast[name] = compare_structure(name, saved_md[name], like, where, meta, model_cfg)
    if model_cfg is not None:  # same shapes, but other numerics (rope_theta, token ids, ...)
        check_model_fields(meta, model_cfg, where)
    names = [n for n in items_like if n in present]
    args: dict[str, Any] = {n: ocp.args.StandardRestore(_abstract(items_like[n])) for n in names}
    if "data" in present:
        args["data"] = DataStateRestore()
    out = mgr.restore(step, args=ocp.args.Composite(**args))
    expected = meta.get("checksums", {})
    for name in names:
        if name not in expected:
            continue  # written before checksums existed
        got = checksums(out[name])
        bad = [k for k, v in expected[name].items() if k not in recast[name] and got.get(k) != v]
        if bad:
            raise CheckpointError(
                f"{name}/{bad[0]} does not match its checksum"
                + (f" (and {len(bad) - 1} more arrays)" if len(bad) > 1 else "")
            )
    state = like_state.replace(params=out["params"], **out["train"])
    if "ema" in items_like:
        if "ema" in out:
            state = state.replace(ema=out["ema"])
        else:
            _warn(
                f"checkpoint {where} has no EMA (it was saved with train.ema_decay=0): the EMA "
                "starts from the restored params"
            )
            state = state.replace(
                ema=jax.jit(lambda p: jax.tree.map(lambda x: x.astype(jnp.float32) + 0.0, p))(
                    state.params
                )
            )
    data = out.get("data") or {"state": None, "processes": 0}
    if data["state"] is None and data["processes"]:
        _warn(
            f"checkpoint {where} holds the data position of {data['processes']} processes, "
            f"this run has {jax.process_count()}: the data order restarts from the beginning"
        )
    return Restored(state=state, step=step, meta=meta, data_state=data["state"])


def _quarantine(mgr: ocp.CheckpointManager, step: int) -> epath.Path | None:
    """Move a damaged step out of checkpoints/ (so it is neither reused nor overwritten)."""
    src = _step_dir(mgr, step)
    dest_root = epath.Path(mgr.directory).parent / "corrupt_checkpoints"
    dest = dest_root / str(step)
    if jax.process_index() == 0:
        dest_root.mkdir(parents=True, exist_ok=True)
        n = 1
        while dest.exists():
            dest, n = dest_root / f"{step}.{n}", n + 1
        src.rename(dest)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"lladax_quarantine_{step}")
    mgr.reload()
    return dest


def restore(
    mgr: ocp.CheckpointManager,
    like_state: Any,
    step: int | None = None,
    *,
    model_cfg: ModelConfig | None = None,
    quarantine: bool = True,
) -> Restored:
    """Restore the newest good TrainState (or exactly `step`) onto the shapes/shardings of
    `like_state` (any mesh). A damaged step (unreadable, truncated, checksum mismatch) gives a
    `CheckpointWarning`, is moved to `corrupt_checkpoints/` (`quarantine`) and the step before
    it is tried. Raises CheckpointMismatchError at once for a checkpoint of another model
    (`model_cfg` names the differing config fields), CheckpointError if no step is good."""
    steps = [step] if step is not None else sorted(mgr.all_steps(), reverse=True)
    if not steps:
        raise CheckpointError(f"no checkpoint in {mgr.directory}")
    failures = []
    for s in steps:
        try:
            result, error = _restore_step(mgr, like_state, s, model_cfg), None
        except CheckpointMismatchError:
            raise
        except CheckpointError as e:
            result, error = None, str(e)
        except Exception as e:  # orbax/tensorstore raise many types for damaged files
            result, error = None, describe_error(e)
        if not _all_processes_ok(error is None):
            error = error or "damaged on another process"
        if error is None:
            return result  # type: ignore[return-value]
        failures.append(f"step {s} ({error})")
        moved = _quarantine(mgr, s) if quarantine else None
        _warn(
            f"checkpoint {_step_dir(mgr, s)} is damaged and was skipped ({error})"
            + (f"; moved to {moved}" if moved else "")
            + ("; trying the previous one" if s != steps[-1] else "")
        )
    raise CheckpointError(
        f"no good checkpoint in {mgr.directory}: {'; '.join(failures)}: "
        "start a new workdir or restore the files"
    )


# --- read-only access: meta, params-only restore ------------------------------------------------
def _read_only_manager(
    run_dir: str | os.PathLike, concurrent_gb: int | None = None
) -> ocp.CheckpointManager:
    d = as_path(run_dir)
    if not (d / "checkpoints").is_dir():
        raise CheckpointError(
            f"{d} has no checkpoints/ directory: pass the workdir of a "
            "`lladax train` run (or a Hugging Face directory with config.json)"
        )
    mgr = manager(d, read_only=True, concurrent_gb=concurrent_gb)
    if mgr.latest_step() is None:
        raise CheckpointError(
            f"{d}/checkpoints holds no finished checkpoint: train longer or point at another run"
        )
    return mgr


def _first_good(mgr: ocp.CheckpointManager, step: int | None, read: Any) -> tuple[int, Any]:
    """(step, read(step)) for `step`, or the newest step `read` succeeds on (warning on each
    damaged one)."""
    saved = sorted(mgr.all_steps(), reverse=True)
    if step is not None and step not in saved:
        raise CheckpointError(
            f"checkpoint {mgr.directory} has no step {step}: the saved steps are {sorted(saved)}"
        )
    steps = [step] if step is not None else saved
    errors = []
    for s in steps:
        try:
            return s, read(s)
        except Exception as e:
            reason = e if isinstance(e, CheckpointError) else describe_error(e)
            errors.append(f"step {s} ({reason})")
            if s != steps[-1]:
                _warn(
                    f"checkpoint {_step_dir(mgr, s)} is damaged ({reason}); using the previous one"
                )
    raise CheckpointError(
        f"checkpoint {mgr.directory} is corrupt or incomplete: "
        f"{'; '.join(errors)}: restore an earlier step or retrain"
    )


def read_meta(run_dir: str | os.PathLike, step: int | None = None) -> tuple[int, dict[str, Any]]:
    """(step, meta JSON) of the newest readable (or the given) checkpoint of a run."""
    mgr = _read_only_manager(run_dir)
    return _first_good(
        mgr,
        step,
        lambda s: mgr.restore(s, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"],
    )


def read_data_state(run_dir: str | os.PathLike, step: int | None = None) -> Any:
    """This process's saved data-iterator state at the newest (or given) step, or None."""
    mgr = _read_only_manager(run_dir)
    step = mgr.latest_step() if step is None else step
    if not (_step_dir(mgr, step) / "data").exists():
        return None
    return mgr.restore(step, args=ocp.args.Composite(data=DataStateRestore()))["data"]["state"]


def load_params(
    run_dir: str | os.PathLike,
    step: int | None = None,
    *,
    shardings: Any = None,
    dtype: Any = None,
    concurrent_gb: int | None = None,
    use_ema: bool = False,
) -> tuple[ModelConfig, Any]:
    """Params-only restore for eval/sampling: (cfg, params) of the newest good checkpoint (or
    `step`), verified against its checksums and placed with `shardings` (default: device 0).
    `use_ema` loads the EMA weights instead (cast to the model's param dtype)."""

    mgr = _read_only_manager(run_dir, concurrent_gb)
    item = "ema" if use_ema else "params"

    def read(s: int) -> tuple[ModelConfig, Any]:
        meta = mgr.restore(s, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        cfg = ModelConfig(**meta["model"])
        if not (_step_dir(mgr, s) / item).exists():
            raise CheckpointError(
                f"step {s} has no {item} item"
                + (" (trained with train.ema_decay=0)" if use_ema else "")
            )
        abstract = transformer.abstract_params(cfg)
        if use_ema:
            abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, jnp.float32), abstract)
        if shardings is not None:
            abstract = jax.tree.map(
                lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                abstract,
                shardings,
            )
        else:
            device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
            abstract = jax.tree.map(
                lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract
            )
        params = mgr.restore(
            s, args=ocp.args.Composite(**{item: ocp.args.StandardRestore(abstract)})
        )[item]
        expected = meta.get("checksums", {}).get(item)
        if expected is not None:
            got = checksums(params)
            bad = [k for k, v in expected.items() if got.get(k) != v]
            if bad:
                raise CheckpointError(f"{item}/{bad[0]} does not match its checksum")
        return cfg, params

    _, (cfg, params) = _first_good(mgr, step, read)
    if use_ema:
        params = jax.tree.map(lambda p: p.astype(cfg.weight_dtype), params)
    if dtype is not None:
        name = jnp.dtype(dtype).name
        params = jax.tree.map(lambda p: p.astype(dtype), params)
        cfg = dataclasses.replace(cfg, dtype=name, param_dtype=name)
    return cfg, params


def save_params(
    run_dir: str | os.PathLike,
    cfg: ModelConfig,
    params: Any,
    *,
    step: int = 0,
    extra_meta: dict[str, Any] | None = None,
    concurrent_gb: int | None = 1,
) -> epath.Path:
    """Write a params-only checkpoint (items params + meta) as `run_dir/checkpoints/<step>/`.

    The layout `load_params` restores onto any mesh (converted HF weights, exported eval
    models). Host staging is bounded to `concurrent_gb` so a big model converts in bounded memory.
    Refuses a directory that already holds checkpoints. Returns the step directory.
    """
    run_dir = as_path(run_dir)
    existing = run_dir / "checkpoints"
    if existing.is_dir() and any(existing.iterdir()):
        raise CheckpointError(
            f"{existing} already holds checkpoints: write into an empty or new directory"
        )
    meta = {"model": dataclasses.asdict(cfg), "checksums": {"params": checksums(params)}} | (
        extra_meta or {}
    )
    mgr = manager(run_dir, keep=1, concurrent_gb=concurrent_gb)
    mgr.save(
        step,
        args=ocp.args.Composite(params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(meta)),
        force=True,
    )
    mgr.wait_until_finished()
    mgr.close()
    return existing / str(step)
