"""The `lladax` console script: one subcommand per module in this package.

lladax train --config configs/small.py [--config.train.steps=500 ...]
lladax sample --checkpoint runs/small --prompt "The list type" [--show-steps]
lladax sample --checkpoint runs/small --infill "A <mask:6> is an ordered <mask> of items."
lladax chat --checkpoint <run or HF dir> [--gen-length 128 --block-length 32]
lladax convert <hf_dir> <out_dir> [--dtype bfloat16]        (HF <-> lladax round trip check)
lladax plan --config configs/llada_8b.py:v5p-128 [--aot v5p-64]   (HBM per chip, tokens/s)
lladax data prepare --source corpus/ --out data/tok [--tokenizer tok.model --shards 8]
lladax experiment reversal --seeds 0 1 2     (also: scaling, sampler; docs/experiments.md)
lladax serve --checkpoint runs/small --port 8000    (OpenAI-compatible HTTP API; docs/serving.md)
"""

from __future__ import annotations

import argparse
import sys

from lladax.cli import (
    chat_cmd,
    convert_cmd,
    data_cmd,
    eval_cmd,
    experiment_cmd,
    plan_cmd,
    sample_cmd,
    serve_cmd,
    train_cmd,
)
from lladax.libtpu_env import quiet_without_tpu

COMMANDS = {
    "train": train_cmd,
    "sample": sample_cmd,
    "chat": chat_cmd,
    "convert": convert_cmd,
    "eval": eval_cmd,
    "plan": plan_cmd,
    "data": data_cmd,
    "experiment": experiment_cmd,
    "serve": serve_cmd,
}


def main(argv: list[str] | None = None) -> int:
    quiet_without_tpu()  # before JAX starts: libtpu on a CPU machine prints nothing
    parser = argparse.ArgumentParser(
        prog="lladax", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        module.add_parser(sub, name)
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognised arguments: {' '.join(rest)}")
    try:
        return COMMANDS[args.command].run(args, rest) or 0
    except (
        ValueError,
        KeyError,
        FileNotFoundError,
        PermissionError,
        IsADirectoryError,
        NotADirectoryError,
    ) as e:
        # Every expected failure is a one-line message naming the problem and the fix; a path
        # the user named that cannot be read or written is one too (the OS names the path).
        message = " ".join(line.strip() for line in str(e).splitlines()) or type(e).__name__
        print(f"lladax {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lladax {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
