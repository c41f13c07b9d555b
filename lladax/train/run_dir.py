"""A training run directory's own files besides the checkpoints, and what a resume may change.

`MetricsFile` keeps `metrics.jsonl` so that a kill or a resume never leaves a torn or repeated
record; `check_resume` refuses a resume that cannot go on as asked (past
train.steps, another tokenizer, other model numerics); `resume_changes` names the settings a
resume changes harmlessly (model numerics are checked on restore:
`lladax.store.integrity.check_model_fields`). Used by `lladax.train.loop`.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from etils import epath

from lladax.files import atomic_write
from lladax.store.integrity import CheckpointError, changed_fields, model_changes
from lladax.train.run_config import RunConfig

log = logging.getLogger("lladax.train.trainer")


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
            log.info(
                "%s: dropped %d record(s) past step %d or torn by a kill (those steps are redone)",
                self.path,
                len(lines) - len(keep),
                step,
            )
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


# --- what a resume may change ------------------------------------------------------------------
# Run-config keys whose change on resume is harmless (train.seed only seeds the initial params;
# train.steps is reported on its own), and the sections compared (eval, log, checkpoint and mesh
# never change the trajectory).
_RUN_IGNORED = ("train.seed", "train.steps")
_RUN_SECTIONS = ("data", "train", "preference")


def run_changes(saved_run: dict[str, Any], now_run: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(section.key, saved, now) of the data/train settings a resume changes (other than
    train.steps and train.seed): the run goes on, but not as an uninterrupted one would."""
    out: list[tuple[str, Any, Any]] = []
    for section in _RUN_SECTIONS:
        out += changed_fields(saved_run.get(section) or {}, now_run[section], section)
    return [c for c in out if c[0] not in _RUN_IGNORED]


def check_resume(
    workdir: epath.Path,
    latest: int,
    steps: int,
    stop_after: int | None,
    tokenizer_file: tuple[str, bytes],
    tokenizer: str,
) -> None:
    """Refuse a resume of `workdir` (newest checkpoint: step `latest`) that cannot go on as
    asked: past `train.steps`, before `--stop-after`, or with another tokenizer than the one
    the run copied in (`tokenizer_file` = (name, bytes) of the configured `tokenizer`)."""
    if latest > steps:
        raise CheckpointError(
            f"workdir {workdir} holds a checkpoint at step {latest}, past "
            f"train.steps={steps}: pass --config.train.steps above {latest} "
            "to train on, or a new --workdir"
        )
    if stop_after is not None and stop_after < latest:
        raise CheckpointError(
            f"--stop-after {stop_after} is before the checkpoint at step "
            f"{latest} in {workdir}: pass a later step, or a new --workdir"
        )
    name, payload = tokenizer_file
    mine = workdir / name
    other = workdir / ("tokenizer.json" if name == "tokenizer.model" else "tokenizer.model")
    differs = mine.read_bytes() != payload if mine.exists() else other.exists()
    if differs:
        raise CheckpointError(
            f"workdir {workdir} was trained with another tokenizer than data.tokenizer="
            f"{tokenizer!r} (its {mine.name if mine.exists() else other.name} differs): set "
            "--config.data.tokenizer back, or use a new --workdir"
        )


def resume_changes(meta: dict[str, Any], run: RunConfig) -> tuple[str | None, str | None]:
    """(a note on a changed train.steps, a warning naming every other changed setting) of a
    resume from a checkpoint with `meta` (saved by this or an older lladax) as run config `run`;
    None when nothing changed. Changes that alter the computed function were refused on
    restore."""
    saved_run = meta.get("run") or {}
    was, steps = (saved_run.get("train") or {}).get("steps"), run.train.steps
    steps_line = (
        None
        if was is None or was == steps
        else f"with train.steps={steps} (was {was}): "
        "the learning-rate schedule follows the new length"
    )
    changes = model_changes(meta.get("model") or {}, run.model)[1] + run_changes(
        saved_run, run.to_dict()
    )
    changes_line = (
        None
        if not changes
        else (
            f"with changed settings ({', '.join(f'{k} {a!r} -> {b!r}' for k, a, b in changes)}): "
            "the run continues with the new values, so it will not match an uninterrupted run"
        )
    )
    return steps_line, changes_line
