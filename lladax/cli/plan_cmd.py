"""`lladax plan`: parameters, FLOPs/token, HBM per device and throughput of a run config.

Plan a run: parameter count, FLOPs per token, HBM per device (params, optimizer, gradients,
activations) and tokens/s/chip at a stated MFU, and the mesh this slice should use for the
config's global batch (the best layout, why, the runner-up, and the flags that select it).
--aot compiles the real train step for a TPU slice from this machine (needs libtpu:
uv sync --extra tpu). Takes the same --config.section.key=value overrides as `lladax train`.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

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
    p.add_argument(
        "--mesh",
        metavar="LAYOUT",
        help="auto (the chosen layout), config (the config's mesh and grad_accum) or "
        "data=1,fsdp=256,tensor=2[,dcn_data=2][,grad_accum=5]; default: the config's when it "
        "plans on this hardware, else the chosen one",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print the plan as one JSON object (mesh, memory by part, the compiler's numbers)",
    )
    p.set_defaults(accepts_overrides=True)


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from lladax.train import mesh_choice, plan

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
    forced = None if args.mesh in (None, "auto", "config") else mesh_choice.parse_layout(args.mesh)
    config = load_config_file(args.config)
    apply_overrides(config, overrides)
    target = aot_hw or hw
    config, notes = _layout(config, target, args, forced)
    estimate = plan.estimate(config, target, args.mfu)
    aot = plan.aot_compile(config, aot_hw) if aot_hw is not None else None
    if args.json:
        print(json.dumps(plan.as_record(estimate, config, aot, notes)))
    else:
        print(plan.render(estimate, aot, notes))
    return 0


def _layout(config: Any, hw: Any, args: argparse.Namespace, forced: Any) -> tuple[Any, list[str]]:
    """(the config with the layout to plan, the plan's lines on the mesh choice)."""
    from lladax.train import mesh_choice, plan

    if forced is not None:
        return forced.applied(config), [f"forced by --mesh: {forced.describe()}"]
    choices = mesh_choice.choose(config, hw, args.mfu)
    notes = mesh_choice.explain(choices, hw)
    if args.mesh == "config":
        return config, notes
    if args.mesh is None:
        try:
            plan.estimate(config, hw, args.mfu)
            return config, [*notes, "planned below: the config's own mesh (--mesh auto: the best)"]
        except plan.PlanError as e:
            notes.append(f"the config's mesh does not plan on {hw.name} ({e}): planned below: best")
    if not choices[0].fits:
        raise plan.PlanError(notes[0])
    return choices[0].layout.applied(config), notes
