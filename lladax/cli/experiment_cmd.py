"""`lladax experiment NAME [options]`: the paper's claims at small scale (lladax.experiments).

    lladax experiment reversal --seeds 0 1 2        forward vs reverse completion, AR vs diffusion
    lladax experiment scaling --sizes xs s m        held-out loss + continuation ranking by size
    lladax experiment sampler                       steps / block length / remasking ablations

Each writes NAME.json and NAME.png into --out (default docs/experiments); `lladax experiment
NAME --help` lists its options.
"""

from __future__ import annotations

import argparse
import importlib

from lladax.experiments import EXPERIMENTS


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="run a small-scale experiment (reversal, scaling, sampler)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=EXPERIMENTS)
    p.add_argument("options", nargs=argparse.REMAINDER, help="the experiment's own options")


def run(args: argparse.Namespace, rest: list[str]) -> int:
    module = importlib.import_module(f"lladax.experiments.{args.name}")
    result = module.main(args.options)
    out = result["settings"]["out"]
    print(f"wrote {out}/{args.name}.json and {out}/{args.name}.png")
    return 0
