"""The `lladax` console script: one subcommand per module in this package.

  lladax train --config configs/small.py [--config.train.steps=500 ...]
  lladax convert <hf_dir> <out_dir> [--dtype bfloat16]        (HF <-> lladax round trip check)
"""

from __future__ import annotations

import argparse
import sys

from lladax.cli import convert_cmd, train_cmd

COMMANDS = {"train": train_cmd, "convert": convert_cmd}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lladax", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        module.add_parser(sub, name)
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognised arguments: {' '.join(rest)}")
    try:
        return COMMANDS[args.command].run(args, rest) or 0
    except (ValueError, FileNotFoundError, KeyError) as e:
        # Every expected failure is a one-line message naming the problem and the fix.
        print(f"lladax {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
