"""Saving and restoring the TrainState of a training run: an asynchronous, atomic save of every
item (params, the rest of the state, the EMA, each process's data position, the JSON meta with
per-array checksums), and a resume that restores the newest good step onto any mesh.

Array files carry no checksum of their own (a flipped bit restores as silent garbage), so
`save` records a position-sensitive checksum of every array in `meta` and every restore
verifies it; a damaged or unreadable step is reported with a warning, moved aside and the one
before it is used (keep >= 2). The on-disk layout and the manager are `layout`; params-only
reading and writing is `params_checkpoint` (both re-exported here for the training loop).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from lladax.config import ModelConfig
from lladax.store.data_state import DataStateRestore, DataStateSave
from lladax.store.integrity import (
    CheckpointError,
    CheckpointMismatchError,
    check_model_fields,
    checksums,
    compare_structure,
    describe_error,
)
from lladax.store.layout import ITEMS, step_dir, warn_checkpoint


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


@dataclasses.dataclass
class Restored:
    state: Any  # the TrainState, placed like the target
    step: int
    meta: dict[str, Any]  # the JSON meta of the step
    data_state: Any  # this process's data-iterator state, or None (absent / other layout)


def _restore_step(
    mgr: ocp.CheckpointManager, like_state: Any, step: int, model_cfg: ModelConfig | None
) -> Restored:
    where = str(step_dir(mgr, step))
    items_like = state_items(like_state)
    present = {name for name in ITEMS if (step_dir(mgr, step) / name).exists()}
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
            warn_checkpoint(
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
        warn_checkpoint(
            f"checkpoint {where} holds the data position of {data['processes']} processes, "
            f"this run has {jax.process_count()}: the data order restarts from the beginning"
        )
    return Restored(state=state, step=step, meta=meta, data_state=data["state"])


def _quarantine(mgr: ocp.CheckpointManager, step: int) -> epath.Path | None:
    """Move a damaged step out of checkpoints/ (so it is neither reused nor overwritten)."""
    src = step_dir(mgr, step)
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
        warn_checkpoint(
            f"checkpoint {step_dir(mgr, s)} is damaged and was skipped ({error})"
            + (f"; moved to {moved}" if moved else "")
            + ("; trying the previous one" if s != steps[-1] else "")
        )
    raise CheckpointError(
        f"no good checkpoint in {mgr.directory}: {'; '.join(failures)}: "
        "start a new workdir or restore the files"
    )
