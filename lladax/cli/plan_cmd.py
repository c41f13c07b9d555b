"""`lladax plan`: parameters, FLOPs/token, HBM per device and throughput of a run config.

Plan a run: parameter count, FLOPs per token, HBM per device (params, optimizer, gradients,
activations) and tokens/s/chip at a stated MFU. --aot compiles the real train step for a TPU
slice from this machine (needs libtpu: uv sync --extra tpu).
"""

from __future__ import annotations

import argparse

from lladax.cli.common import command_parser
from lladax.train.config_files import apply_overrides, load_config_file


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = command_parser(sub, name, "estimate memory per device and throughput before a run", __doc__)
    p.add_argument("--config", required=True, help="configs/<name>.py[:hardware]")
    p.add_argument(
        "--hardware",
        help="e.g. v5p-128, v5e-256, 8xh100 (default: the config "
        "argument, e.g. configs/llada_8b.py:v5p-128)",
    )
    p.add_argument("--mfu", type=float, default=0.45, help="assumed MFU (default 0.45)")
    p.add_argument(
        "--aot",
        metavar="TPU",
        help="ahead-of-time compile for this TPU slice, "
        "e.g. v5p-64, and print the compiler's memory",
    )
    p.set_defaults(accepts_overrides=True)


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from lladax.train import plan

    # Flags first (cheap, no config executed), then the config file and its overrides.
    if not 0 < args.mfu <= 1:
        raise ValueError(
            f"--mfu {args.mfu} must be in (0, 1]: the fraction of peak FLOP/s reached, e.g. 0.45"
        )
    name = args.hardware or args.aot or args.config.partition(":")[2]
    if not name:
        raise ValueError("name the hardware: --hardware v5p-128 (or configs/x.py:<hardware>)")
    hw = plan.hardware(name)
    aot_hw = plan.hardware(args.aot) if args.aot else None
    if aot_hw is not None and aot_hw.topology is None:
        raise ValueError(
            f"--aot {args.aot}: ahead-of-time compilation needs a TPU slice name (e.g. v5p-64)"
        )
    config = load_config_file(args.config)
    apply_overrides(config, overrides)
    estimate = plan.estimate(config, hw, args.mfu)
    aot = None
    if aot_hw is not None:
        if aot_hw.chips != hw.chips:
            estimate = plan.estimate(config, aot_hw, args.mfu)
        aot = plan.aot_compile(config, aot_hw)
    print(plan.render(estimate, aot))
    return 0
