"""`lladax train`: train from a config file with `--config.x=y` overrides."""

from __future__ import annotations

import argparse
import json

from lladax.cli.config_files import apply_overrides, load_config_file


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="train a model (pretraining loss) from a config file",
                       description="Train from configs/*.py; override any key with "
                                   "--config.section.key=value (unknown keys are errors).")
    p.add_argument("--config", required=True, help="configs/<name>.py[:arg]")
    p.add_argument("--workdir", help="shortcut for --config.log.workdir")
    p.add_argument("--stop-after", type=int, default=None,
                   help="checkpoint and stop at this step (rerun the command to resume)")
    p.set_defaults(accepts_overrides=True)


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    config = load_config_file(args.config)
    apply_overrides(config, overrides)
    if args.workdir:
        config.log.workdir = args.workdir
    from lladax import train  # heavy imports only once the arguments are valid

    final = train.run(config, stop_after=args.stop_after)
    print(json.dumps({k: final[k] for k in ("step", "loss", "eval_loss", "tokens_per_s", "mfu")
                      if k in final}))
    print(f"saved to {config.log.workdir}")
    return 0
