"""A run's checkpoints on disk: the layout, the items of a step and the Orbax CheckpointManager
over them (writable for a training run, read-only for everything that only reads a run).

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
previous good checkpoint. Saving and restoring a TrainState is `checkpoint`; reading params
alone (and writing params-only checkpoints) is `params_checkpoint`.
"""

from __future__ import annotations

import logging
import os
import warnings

import jax
import orbax.checkpoint as ocp
from etils import epath

from lladax.store.data_state import DataStateHandler
from lladax.store.integrity import CheckpointError, CheckpointWarning, as_path

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


def read_only_manager(
    run_dir: str | os.PathLike, concurrent_gb: int | None = None
) -> ocp.CheckpointManager:
    """The read-only manager of a finished run, or a one-line CheckpointError naming why not."""
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


def step_dir(mgr: ocp.CheckpointManager, step: int) -> epath.Path:
    """The directory of `step` under the manager's checkpoints/."""
    return epath.Path(mgr.directory) / str(step)


def warn_checkpoint(message: str) -> None:
    """Warn (CheckpointWarning) at the caller of the function that calls this."""
    warnings.warn(message, CheckpointWarning, stacklevel=3)
