"""`lladax experiment NAME [options]`: the paper's claims at small scale (lladax.eval.experiments).

    lladax experiment reversal --seeds 0 1 2        forward vs reverse completion, AR vs diffusion
    lladax experiment scaling --sizes xs s m        held-out loss + continuation ranking by size
    lladax experiment sampler --seeds 0 1 2         steps / block length / remasking ablations
    lladax experiment blocks --seeds 0 1 2          AR vs LLaDA vs block diffusion, AR -> BD
    lladax experiment vrpo --seeds 0 1 2            DPO -> VRPO ablation of the SFT model, AR DPO

Each writes NAME.json (written first, atomically) and NAME.png into --out (default
docs/experiments); an earlier result there is replaced only with --overwrite; --no-plot skips
the PNG (and matplotlib). `lladax experiment NAME --help` lists its options.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys

from lladax.cli.common import command_parser
from lladax.eval.experiments import EXPERIMENTS


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = command_parser(
        sub,
        name,
        "run a small-scale experiment (reversal, scaling, sampler, blocks, vrpo)",
        __doc__,
    )
    p.add_argument("name", choices=EXPERIMENTS)
    p.add_argument("options", nargs=argparse.REMAINDER, help="the experiment's own options")


def run(args: argparse.Namespace, rest: list[str]) -> int:
    from lladax.eval.experiments.common import PlotError, Stopped

    module = importlib.import_module(f"lladax.eval.experiments.{args.name}")
    try:
        result = module.main(args.options)
    except PlotError as e:  # not a usage error: the result exists, only its picture failed
        print(f"lladax experiment: error: {e}", file=sys.stderr)
        return 1
    except (Stopped, KeyboardInterrupt) as e:  # a signal: say so in one line, no traceback
        reason = getattr(e, "reason", "SIGINT")
        message = str(e) if isinstance(e, Stopped) else Stopped(reason, "the experiment")
        print(f"lladax experiment: {message}", file=sys.stderr)
        # The shell's convention for "killed by signal N" (75, EX_TEMPFAIL, for a preemption).
        return 128 + signal.Signals[reason].value if reason in signal.Signals.__members__ else 75
    settings = result["settings"]
    out = settings["out"]
    png = "" if settings["no_plot"] else f" and {out}/{args.name}.png"
    print(f"wrote {out}/{args.name}.json{png}")
    return 0
