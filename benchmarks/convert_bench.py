"""Benchmark `lladax convert` on a synthetic checkpoint with the `llada_1b` shapes.

  .venv/bin/python benchmarks/convert_bench.py [--layers 22] [--shard-size 1GB] [--keep DIR]

Builds a random bf16 Hugging Face checkpoint (sharded safetensors + index + config.json) of the
`llada_1b` preset (optionally with fewer layers: every tensor keeps its 1B size), then runs
`lladax convert hf-to-orbax` and `lladax convert orbax-to-hf` each in a fresh subprocess, so each
direction's peak RSS (VmHWM) is its own. A third subprocess that only imports jax + lladax and
touches the device gives the process baseline. Checks the HF -> Orbax -> HF result bit for bit.
Prints a markdown table (wall time, MB/s, peak RSS vs baseline, checkpoint and largest shard).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness
import numpy as np

from lladax import config as C
from lladax.store import hf_format, safetensors_io
from lladax.store.safetensors_io import ShardWriter, parse_size, plan_shards

ROOT = Path(__file__).resolve().parents[1]

COLUMNS = [
    "direction",
    "wall s",
    "MB/s",
    "peak RSS MiB",
    "peak − baseline MiB",
    "(peak − baseline) / largest shard",
    "(peak − baseline − params) / largest shard",
]
CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import jax, jax.numpy as jnp
from lladax.store import checkpoint, convert
from lladax.cli import main
jnp.zeros(1).block_until_ready()
def vm(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
t1 = time.perf_counter()
rc = main(sys.argv[1:]) if len(sys.argv) > 1 else 0
t2 = time.perf_counter()
print("RESULT " + json.dumps({"rc": rc, "import_s": t1 - t0, "wall_s": t2 - t1,
                              "hwm": vm("VmHWM:"), "rss": vm("VmRSS:")}))
"""


def make_checkpoint(path: Path, cfg: C.ModelConfig, shard_bytes: int, seed: int = 0) -> None:
    """Random bf16 weights in the hub layout, streamed to disk one tensor at a time."""
    import ml_dtypes

    rng = np.random.default_rng(seed)
    shapes = hf_format.hf_shapes(cfg)
    nbytes = [(n, int(np.prod(s)) * 2) for n, s in shapes.items()]
    shards = plan_shards(nbytes, shard_bytes)
    files = [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))]
    path.mkdir(parents=True)
    for file, names in zip(files, shards, strict=True):
        writer = ShardWriter(
            path / file, [(n, np.dtype(ml_dtypes.bfloat16), shapes[n]) for n in names]
        )
        for name in names:
            # Finite bf16 values of magnitude ~2^-7..2^-6 with random signs (fast to draw).
            bits = rng.integers(0, 2**16, shapes[name], dtype=np.uint16) & 0x807F | 0x3C00
            writer.write(name, bits.view(ml_dtypes.bfloat16))
        writer.close()
    weight_map = {n: f for f, names in zip(files, shards, strict=True) for n in names}
    index = {"metadata": {"total_size": sum(b for _, b in nbytes)}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    (path / "config.json").write_text(json.dumps(cfg.to_hf_dict() | {"torch_dtype": "bfloat16"}))


def child(*args: str) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", CHILD, *args], capture_output=True, text=True, env=env, cwd=ROOT
    )
    lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    if out.returncode or not lines:
        raise SystemExit(f"child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][7:])


def digest(path: Path) -> dict[str, str]:
    """name -> sha256 of the tensor bytes (streamed, one tensor at a time)."""
    return {
        n: hashlib.sha256(safetensors_io.read_tensor(i).tobytes()).hexdigest() + str(i.dtype)
        for n, i in safetensors_io.scan_dir(path).items()
    }


def main() -> None:
    ap = harness.parser(__doc__)
    ap.add_argument("--layers", type=int, default=None, help="default: the preset's 22")
    ap.add_argument("--shard-size", default="1GB")
    ap.add_argument("--keep", default=None, help="work in this directory and keep it")
    args = ap.parse_args()
    cfg = C.preset("llada_1b", **({"n_layers": args.layers} if args.layers else {}))
    cfg = cfg.replace(dtype="bfloat16", param_dtype="bfloat16")
    shard_bytes = parse_size(args.shard_size)
    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="convert_bench_")
    work = Path(args.keep or tmp.name)
    src, orb, back = work / "hf", work / "orbax", work / "hf_back"
    try:
        t = time.perf_counter()
        make_checkpoint(src, cfg, shard_bytes)
        made_s = time.perf_counter() - t
        sizes = [f.stat().st_size for f in src.glob("*.safetensors")]
        total, largest = sum(sizes), max(sizes)
        base = child()
        h2o = child("convert", "hf-to-orbax", str(src), str(orb), "--no-progress")
        o2h = child(
            "convert",
            "orbax-to-hf",
            str(orb),
            str(back),
            "--no-progress",
            "--max-shard-size",
            args.shard_size,
        )
        identical = digest(src) == digest(back)
    finally:
        if tmp is not None:
            tmp.cleanup()
    mib = 2**20
    print(
        f"llada_1b shapes, n_layers={cfg.n_layers}: {cfg.param_count() / 1e9:.3f}B params, "
        f"bf16 checkpoint {total / mib:.0f} MiB in {len(sizes)} shards (largest "
        f"{largest / mib:.0f} MiB), built in {made_s:.1f} s; round trip bit-identical: "
        f"{identical}"
    )
    print(
        f"process baseline (python + jax + lladax imported, device touched): VmHWM "
        f"{base['hwm'] / mib:.0f} MiB\n"
    )
    print(harness.table_header(COLUMNS))
    for name, r in (("hf-to-orbax", h2o), ("orbax-to-hf", o2h)):
        extra = r["hwm"] - base["hwm"]
        cells = [name, f"{r['wall_s']:.1f}", f"{total / 1e6 / r['wall_s']:.0f}"]
        cells += [f"{r['hwm'] / mib:.0f}", f"{extra / mib:.0f}", f"{extra / largest:.2f}"]
        print(harness.table_row([*cells, f"{(extra - total) / largest:.2f}"]))


if __name__ == "__main__":
    main()
