"""Params-only access to checkpoints: read a finished run (its meta, its data position, its params
alone, verified and placed on any mesh) and write params-only checkpoints (converted HF weights,
exported eval models) that `load_params` reads back. What eval, sampling, conversion and
`checkpoint.init_from` use; saving and restoring a whole TrainState is `checkpoint`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath

from lladax.config import ModelConfig
from lladax.model import transformer
from lladax.store.data_state import DataStateRestore
from lladax.store.integrity import CheckpointError, as_path, checksums, describe_error
from lladax.store.layout import manager, read_only_manager, step_dir, warn_checkpoint


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
                warn_checkpoint(
                    f"checkpoint {step_dir(mgr, s)} is damaged ({reason}); using the previous one"
                )
    raise CheckpointError(
        f"checkpoint {mgr.directory} is corrupt or incomplete: "
        f"{'; '.join(errors)}: restore an earlier step or retrain"
    )


def read_meta(run_dir: str | os.PathLike, step: int | None = None) -> tuple[int, dict[str, Any]]:
    """(step, meta JSON) of the newest readable (or the given) checkpoint of a run."""
    mgr = read_only_manager(run_dir)
    return _first_good(
        mgr,
        step,
        lambda s: mgr.restore(s, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"],
    )


def read_data_state(run_dir: str | os.PathLike, step: int | None = None) -> Any:
    """This process's saved data-iterator state at the newest (or given) step, or None."""
    mgr = read_only_manager(run_dir)
    step = mgr.latest_step() if step is None else step
    if not (step_dir(mgr, step) / "data").exists():
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

    mgr = read_only_manager(run_dir, concurrent_gb)
    item = "ema" if use_ema else "params"

    def read(s: int) -> tuple[ModelConfig, Any]:
        meta = mgr.restore(s, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        cfg = ModelConfig(**meta["model"])
        if not (step_dir(mgr, s) / item).exists():
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
