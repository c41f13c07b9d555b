"""`lladax train`: train from a config file with `--config.section.key=value` overrides.

The config file is configs/<name>.py (any of its keys can be overridden; unknown keys are
errors). Rerunning the same command resumes from the newest checkpoint in the workdir.

Block diffusion (docs/block_diffusion.md): configs/bd_small.py, configs/llada_8b_bd.py;
`--config.train.block_curriculum=1:200,4:200,2048:400,32` changes the block size over training
(the last size = model.block_size), `--config.checkpoint.init_from=RUN` starts a new run from an
autoregressive or LLaDA run of the same shapes.

Exit codes: 0 finished (or stopped by --stop-after; also when a signal arrives only during the
final save, which completes), 2 bad input, 75 stopped by SIGTERM/SIGINT or a preemption notice
after saving a checkpoint (rerun the same command to resume).

Every check that needs no device runs first (`preflight`: the whole run config, the data source,
the tokenizer and init_from paths, the workdir), so bad input is refused in milliseconds, before
JAX starts, and nothing is written.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

from lladax.cli.common import command_parser
from lladax.train.config_files import apply_overrides, load_config_file

EXIT_PREEMPTED = 75  # = loop.EXIT_PREEMPTED (EX_TEMPFAIL), duplicated to keep imports light
RUN_MARKERS = ("checkpoints", "metrics.jsonl")  # what every training workdir holds


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = command_parser(
        sub, name, "train a model (pretraining or SFT loss) from a config file", __doc__
    )
    p.add_argument("--config", required=True, help="configs/<name>.py[:arg]")
    p.add_argument("--workdir", help="shortcut for --config.log.workdir (local path or gs://...)")
    p.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="checkpoint and stop at this step (rerun the command to resume)",
    )
    g = p.add_argument_group(
        "multi-process (every process runs the same command; flags override the LLADAX_* env)"
    )
    g.add_argument(
        "--distributed",
        choices=["off", "auto"],
        default="off",
        help="auto: let JAX detect the cluster (Cloud TPU pod, SLURM, ...)",
    )
    g.add_argument(
        "--coordinator-address",
        default=None,
        help="HOST:PORT of process 0 (env LLADAX_COORDINATOR_ADDRESS)",
    )
    g.add_argument(
        "--num-processes",
        type=int,
        default=None,
        help="number of processes (env LLADAX_NUM_PROCESSES)",
    )
    g.add_argument(
        "--process-id",
        type=int,
        default=None,
        help="this process's index, 0..N-1 (env LLADAX_PROCESS_ID)",
    )
    p.set_defaults(accepts_overrides=True)


def _local(path: str) -> bool:
    return "://" not in path


def _check_workdir(workdir: str) -> None:
    """A local workdir must be a training run, empty or new, in a writable place (object
    stores are checked by the loop, which can reach them)."""
    from lladax.files import check_destination

    if not _local(workdir):
        return
    check_destination(
        workdir, markers=RUN_MARKERS, what="a training run", flag="--workdir", allow_own=True
    )
    path = os.path.abspath(os.path.expanduser(workdir))
    parent = path
    while not os.path.exists(parent):  # the directory the run dir will be created in
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(
            f"output directory {path} is not writable ({parent} is "
            f"{'not a directory' if not os.path.isdir(parent) else 'read-only'}): "
            "pass a writable --workdir (or --config.log.workdir)"
        )


def preflight(config: Any, stop_after: int | None) -> None:
    """Refuse bad input before JAX starts: the run config (`run_config.check_run_config`),
    --stop-after, the data source (`preflight.check_source`), the tokenizer and init_from paths
    and the workdir. Raises a one-line ValueError / FileNotFoundError."""
    from lladax.data import preflight
    from lladax.train.run_config import check_run_config

    run = check_run_config(config, stop_after)
    tokenizer = run.data.tokenizer
    if (
        tokenizer not in ("", "embedded", "default")
        and _local(tokenizer)
        and not os.path.exists(os.path.expanduser(tokenizer))
    ):
        raise FileNotFoundError(
            f"data.tokenizer={tokenizer!r} does not exist: pass a "
            "sentencepiece .model, a tokenizer.json (or a directory holding "
            "one), or '' for the embedded tokenizer"
        )
    init_from = run.checkpoint.init_from
    if init_from and _local(init_from):
        src = os.path.expanduser(init_from)
        if not os.path.isdir(src):
            raise FileNotFoundError(
                f"checkpoint.init_from={init_from!r} "
                f"{'does not exist' if not os.path.exists(src) else 'is not a directory'}: pass "
                "a `lladax train` workdir, an Orbax params export or a Hugging Face directory"
            )
        if not any(os.path.exists(os.path.join(src, m)) for m in ("checkpoints", "config.json")):
            raise ValueError(
                f"checkpoint.init_from={init_from!r} holds neither checkpoints/ nor "
                "config.json: pass a `lladax train` workdir, an Orbax params "
                "export or a Hugging Face directory"
            )
    _check_workdir(run.log.workdir)
    preflight.check_source(run.data.source, field=run.data.field, fmt=run.data.format)


class _StderrHandler(logging.Handler):
    """The loop's INFO/WARNING lines on the current sys.stderr (looked up per record, so an
    in-process caller that swaps stderr sees them), as `lladax train: [warning: ]message`."""

    def emit(self, record: logging.LogRecord) -> None:
        kind = f"{record.levelname.lower()}: " if record.levelno >= logging.WARNING else ""
        try:
            print(f"lladax train: {kind}{record.getMessage()}", file=sys.stderr, flush=True)
        except Exception:  # never let a log line break a run
            self.handleError(record)


@contextlib.contextmanager
def _log_lines() -> Iterator[None]:
    """During `lladax train` the loop's INFO lines show too (resumed from..., what a resume
    changes, the final save), each once and in the CLI's format: not also through the root
    handler Orbax installs (`WARNING:lladax.train.trainer:...`). Undone afterwards, so an in-process
    caller's other commands print as before."""
    logger, handler = logging.getLogger("lladax"), _StderrHandler()
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    if level == logging.NOTSET or level > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    config = load_config_file(args.config)
    apply_overrides(config, overrides)
    if args.workdir is not None:
        if not args.workdir.strip():
            raise ValueError(
                "--workdir is empty: pass the run directory (or leave the flag out "
                f"to use log.workdir={config.log.workdir!r})"
            )
        config.log.workdir = args.workdir
    preflight(config, args.stop_after)
    from lladax.train import distributed

    # Before anything touches a JAX backend: the processes must form one job first.
    info = distributed.initialize(
        args.coordinator_address, args.num_processes, args.process_id, mode=args.distributed
    )
    from lladax.train import loop  # heavy imports only once the arguments are valid

    with _log_lines():
        final = loop.run(config, stop_after=args.stop_after)
    if info.process_index == 0:
        print(
            json.dumps(
                {
                    k: final[k]
                    for k in (
                        "step",
                        "loss",
                        "eval_loss",
                        "tokens_per_s",
                        "mfu",
                        "skipped",
                        "stopped",
                    )
                    if k in final
                }
            )
        )
        print(f"saved to {config.log.workdir}")
    stopped = final.get("stopped")
    return EXIT_PREEMPTED if stopped and stopped != "stop_after" else 0
