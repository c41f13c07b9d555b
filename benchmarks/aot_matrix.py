"""The AOT matrix: compile the real train step of every TPU layout that matters, from this machine.

    uv sync --extra tpu          # libtpu: describes TPU slices; nothing runs on a TPU
    uv run python benchmarks/aot_matrix.py [--cells NAME ...] [--limit 900] \
        [--out docs/aot_matrix.md] [--json /tmp/aot_matrix.json]

Each cell is one `lladax plan --config ... --aot SLICE --json` in its own subprocess (a crash or
a compile past `--limit` seconds fails that cell only). The table: chips, the mesh planned
(`--mesh auto` cells: the planner's choice), compile seconds, the compiler's peak HBM per chip
(arguments + outputs − aliases + temporaries), the planner's estimate, their ratio, and whether
the peak fits the chip. Cells: every TPU preset layout in configs/ (pretraining, SFT, block
diffusion, VRPO) and the slices no preset names (v5p-1024, v6e-256, 2 × v5p-128 multislice),
where the planner chooses the mesh. `--cells` runs a subset (names as in the table).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GiB = 1024**3
PRESETS = {  # config -> its TPU layouts (configs/<name>.py:<hardware>)
    "llada_1b": ["v4-32", "v5p-16", "v5e-64"],
    "llada_8b": ["v4-128", "v5p-64", "v5p-128", "v5e-256"],
    "llada_8b_sft": ["v4-128", "v5p-64", "v5p-128", "v5e-256"],
    "llada_8b_bd": ["v4-128", "v5p-64", "v5p-128", "v5e-256"],
    "llada_8b_vrpo": ["v5p-64", "v5p-128", "v5e-256"],
}
CHOSEN = [  # (config, slice): no preset layout; the planner picks the mesh
    ("llada_8b", "v5p-1024"),
    ("llada_8b", "v6e-256"),
    ("llada_8b", "2xv5p-128"),
]


def cells() -> dict[str, list[str]]:
    """name -> the `lladax plan` arguments of that cell."""
    out = {}
    for config, slices in PRESETS.items():
        for hw in slices:
            out[f"{config}:{hw}"] = [
                "--config",
                f"configs/{config}.py:{hw}",
                "--aot",
                hw,
                "--mesh",
                "config",
            ]
    for config, hw in CHOSEN:
        out[f"{config} @ {hw}"] = [
            "--config",
            f"configs/{config}.py",
            "--aot",
            hw,
            "--mesh",
            "auto",
        ]
    return out


def run_cell(argv: list[str], limit: float) -> dict:
    """One `lladax plan --json` in a subprocess: its record, or {"error": ...}."""
    cmd = [sys.executable, "-m", "lladax.cli", "plan", *argv, "--json"]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return {"error": f"compile past the {limit:.0f} s limit"}
    if done.returncode != 0:
        lines = [x for x in done.stderr.strip().splitlines() if x.strip()]
        return {"error": (lines[-1] if lines else f"exit {done.returncode}")[:200]}
    record = json.loads(done.stdout.strip().splitlines()[-1])
    record["wall_seconds"] = time.perf_counter() - t0
    return record


def row(name: str, r: dict) -> str:
    if "error" in r:
        return f"| {name} | | | | | | | {r['error']} |"
    m, aot = r["mesh"], r["aot"]
    mesh = f"{m['data']}×{m['fsdp']}×{m['tensor']}"
    if r["slices"] > 1:
        mesh += f" (dcn data {m['dcn_data']}, fsdp {m['dcn_fsdp']})"
    peak, est = aot["peak"] / GiB, r["estimate_bytes"] / GiB
    fits = "yes" if aot["peak"] <= r["hbm_bytes"] else "**no**"
    return (
        f"| {name} | {r['chips']} | {mesh}, accum {r['grad_accum']} | "
        f"{aot['compile_seconds']:.0f} | {peak:.2f} | {est:.2f} | {est / peak:.2f} | {fits} |"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", nargs="*", help="run only these cells (default: all)")
    ap.add_argument("--limit", type=float, default=900.0, help="seconds per cell")
    ap.add_argument("--out", help="also write the markdown table here")
    ap.add_argument("--json", help="also write the records here")
    args = ap.parse_args(argv)
    todo = cells()
    unknown = sorted(set(args.cells or []) - set(todo))
    if unknown:
        ap.error(f"unknown cells {unknown}: choose from {sorted(todo)}")
    names = args.cells or list(todo)
    head = [
        f"AOT matrix, {datetime.date.today()}, {platform.node()} ({platform.machine()}, "
        f"{platform.python_version()}): `python benchmarks/aot_matrix.py"
        + (f" --cells {' '.join(repr(n) for n in args.cells)}" if args.cells else "")
        + "`",
        "",
        "| cell | chips | mesh (data×fsdp×tensor) | compile s | peak GiB/chip | estimate | "
        "est/peak | fits |",
        "|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(head), flush=True)
    records, lines = {}, []
    for name in names:
        records[name] = run_cell(todo[name], args.limit)
        lines.append(row(name, records[name]))
        print(lines[-1], flush=True)
    if args.out:
        Path(args.out).write_text("\n".join(head + lines) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
