"""`lladax train`: train from a config file with `--config.x=y` overrides.

Exit codes: 0 finished (or stopped by --stop-after), 2 bad input, 75 stopped by SIGTERM/SIGINT or
a preemption notice after saving a checkpoint (rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import json

from lladax.cli.config_files import apply_overrides, load_config_file

EXIT_PREEMPTED = 75  # = loop.EXIT_PREEMPTED (EX_TEMPFAIL), duplicated to keep imports light


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="train a model (pretraining or SFT loss) from a config file",
                       description="Train from configs/*.py; override any key with "
                                   "--config.section.key=value (unknown keys are errors). "
                                   "Rerunning the same command resumes from the newest "
                                   "checkpoint in the workdir. Exit code 75: stopped by a "
                                   "signal/preemption after saving (rerun to resume).")
    p.add_argument("--config", required=True, help="configs/<name>.py[:arg]")
    p.add_argument("--workdir", help="shortcut for --config.log.workdir (local path or gs://...)")
    p.add_argument("--stop-after", type=int, default=None,
                   help="checkpoint and stop at this step (rerun the command to resume)")
    g = p.add_argument_group(
        "multi-process (every process runs the same command; flags override the LLADAX_* env)")
    g.add_argument("--distributed", choices=["off", "auto"], default="off",
                   help="auto: let JAX detect the cluster (Cloud TPU pod, SLURM, ...)")
    g.add_argument("--coordinator-address", default=None,
                   help="HOST:PORT of process 0 (env LLADAX_COORDINATOR_ADDRESS)")
    g.add_argument("--num-processes", type=int, default=None,
                   help="number of processes (env LLADAX_NUM_PROCESSES)")
    g.add_argument("--process-id", type=int, default=None,
                   help="this process's index, 0..N-1 (env LLADAX_PROCESS_ID)")
    p.set_defaults(accepts_overrides=True)


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    config = load_config_file(args.config)
    apply_overrides(config, overrides)
    if args.workdir:
        config.log.workdir = args.workdir
    from lladax import distributed

    # Before anything touches a JAX backend: the processes must form one job first.
    info = distributed.initialize(args.coordinator_address, args.num_processes, args.process_id,
                                  mode=args.distributed)
    from lladax import train  # heavy imports only once the arguments are valid

    final = train.run(config, stop_after=args.stop_after)
    if info.process_index == 0:
        print(json.dumps({k: final[k] for k in ("step", "loss", "eval_loss", "tokens_per_s",
                                                "mfu", "skipped", "stopped") if k in final}))
        print(f"saved to {config.log.workdir}")
    stopped = final.get("stopped")
    return EXIT_PREEMPTED if stopped and stopped != "stop_after" else 0
