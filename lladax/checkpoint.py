"""Orbax checkpoints of a training run, and the params-only restore used for inference.

Layout of a run directory (`log.workdir`):
  checkpoints/<step>/params      model params (restorable alone, onto any mesh)
  checkpoints/<step>/train       optimizer state, step, rng
  checkpoints/<step>/meta        JSON: model config, run config, tokenizer file name
  tokenizer.model                the tokenizer the run was trained with (copied in)
  metrics.jsonl                  one JSON line per logged step

Orbax writes each step into a temporary directory and renames it when complete, so a crash
during a save never replaces the previous good checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from lladax.config import ModelConfig

ITEMS = ("params", "train", "meta")


class CheckpointError(ValueError):
    """A run directory or checkpoint is missing or unreadable."""


def _handlers(concurrent_gb: int | None = None) -> dict[str, ocp.CheckpointHandler]:
    limits = {} if concurrent_gb is None else dict(save_concurrent_gb=concurrent_gb,
                                                   restore_concurrent_gb=concurrent_gb)
    return {"params": ocp.StandardCheckpointHandler(**limits),
            "train": ocp.StandardCheckpointHandler(**limits),
            "meta": ocp.JsonCheckpointHandler()}


def manager(run_dir: str | os.PathLike, keep: int = 2, *, read_only: bool = False,
            concurrent_gb: int | None = None) -> ocp.CheckpointManager:
    """A CheckpointManager for `run_dir/checkpoints` keeping the newest `keep` steps.

    `concurrent_gb` bounds the bytes Orbax stages on the host at once while saving or restoring
    (default: Orbax's, 96 GB) — conversion sets it low to keep peak memory near one shard.
    """
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only,
                                           read_only=read_only)
    return ocp.CheckpointManager(Path(run_dir).absolute() / "checkpoints", options=options,
                                 item_handlers=_handlers(concurrent_gb))


def save(mgr: ocp.CheckpointManager, state: Any, meta: dict[str, Any], *,
         force: bool = False) -> None:
    """Save a TrainState (asynchronously; call `mgr.wait_until_finished()` before exiting)."""
    step = int(state.step)
    train = {"opt_state": state.opt_state, "step": state.step, "rng": state.rng}
    mgr.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(state.params), train=ocp.args.StandardSave(train),
        meta=ocp.args.JsonSave(meta)), force=force)


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                       sharding=getattr(x, "sharding", None)),
                        tree)


def restore(mgr: ocp.CheckpointManager, like_state: Any, step: int | None = None) -> Any:
    """Restore the latest (or `step`) TrainState with the shapes/shardings of `like_state`."""
    step = mgr.latest_step() if step is None else step
    if step is None:
        raise CheckpointError(f"no checkpoint in {mgr.directory}")
    train_like = {"opt_state": like_state.opt_state, "step": like_state.step,
                  "rng": like_state.rng}
    restored = mgr.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(_abstract(like_state.params)),
        train=ocp.args.StandardRestore(_abstract(train_like))))
    train = restored["train"]
    return like_state.replace(params=restored["params"], opt_state=train["opt_state"],
                              step=train["step"], rng=train["rng"])


def read_meta(run_dir: str | os.PathLike, step: int | None = None) -> tuple[int, dict[str, Any]]:
    run_dir = Path(run_dir)
    if not (run_dir / "checkpoints").is_dir():
        raise CheckpointError(f"{run_dir} has no checkpoints/ directory: pass the workdir of a "
                              "`lladax train` run (or a Hugging Face directory with config.json)")
    mgr = manager(run_dir, read_only=True)
    step = mgr.latest_step() if step is None else step
    if step is None:
        raise CheckpointError(f"{run_dir}/checkpoints holds no finished checkpoint: train longer "
                              "or point at another run")
    try:
        meta = mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # orbax raises several types for damaged directories
        raise CheckpointError(f"checkpoint {run_dir}/checkpoints/{step} is corrupt or incomplete "
                              f"({type(e).__name__}): restore an earlier step") from None
    return step, meta


def load_params(run_dir: str | os.PathLike, step: int | None = None, *,
                shardings: Any = None, dtype: Any = None,
                concurrent_gb: int | None = None) -> tuple[ModelConfig, Any]:
    """Params-only restore for eval/sampling: (cfg, params), optionally placed with `shardings`."""
    from lladax import model

    step, meta = read_meta(run_dir, step)
    cfg = ModelConfig(**meta["model"])
    abstract = model.abstract_params(cfg)
    if shardings is not None:
        abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                abstract, shardings)
    else:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                                               sharding=device), abstract)
    mgr = manager(run_dir, read_only=True, concurrent_gb=concurrent_gb)
    try:
        params = mgr.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract)))["params"]
    except Exception as e:
        raise CheckpointError(f"params of {run_dir}/checkpoints/{step} are corrupt or do not match "
                              f"the saved config ({type(e).__name__}: {str(e)[:200]})") from None
    if dtype is not None:
        name = jax.numpy.dtype(dtype).name
        params = jax.tree.map(lambda p: p.astype(dtype), params)
        cfg = dataclasses.replace(cfg, dtype=name, param_dtype=name)
    return cfg, params


def save_params(run_dir: str | os.PathLike, cfg: ModelConfig, params: Any, *, step: int = 0,
                extra_meta: dict[str, Any] | None = None, concurrent_gb: int | None = 1) -> Path:
    """Write a params-only checkpoint (items params + meta) as `run_dir/checkpoints/<step>/`.

    The layout `load_params` restores onto any mesh (converted HF weights, exported eval
    models). Host staging is bounded to `concurrent_gb` so a big model converts in bounded memory.
    Refuses a directory that already holds checkpoints. Returns the step directory.
    """
    run_dir = Path(run_dir).absolute()
    existing = run_dir / "checkpoints"
    if existing.is_dir() and any(existing.iterdir()):
        raise CheckpointError(f"{existing} already holds checkpoints: write into an empty or new "
                              "directory")
    meta = {"model": dataclasses.asdict(cfg)} | (extra_meta or {})
    mgr = manager(run_dir, keep=1, concurrent_gb=concurrent_gb)
    mgr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                           meta=ocp.args.JsonSave(meta)), force=True)
    mgr.wait_until_finished()
    mgr.close()
    return existing / str(step)
