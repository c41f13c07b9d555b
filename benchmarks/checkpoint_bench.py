"""Checkpoint save cost: the whole save, and the time the train loop is blocked by an async save.

    python benchmarks/checkpoint_bench.py [--preset small] [--batch 32] [--seq 64] [--saves 5]

A TrainState (params, AdamW moments, guard counters; `--ema` adds an f32 EMA) is saved with
`checkpoint.save` into a local temporary directory, as the loop does. Reported, all in one run:
  * synchronous save  = `checkpoint.save` + `wait_until_finished` (everything written, committed)
  * blocking time     = the `checkpoint.save` call alone (device->host copy, checksums, Orbax
                        bookkeeping); the write itself runs in Orbax's background thread
  * checksum share    = the per-array checksums inside the blocking time
  * loop overhead     = (wall time of N train steps saving every K steps − N steps without
                        saving) ÷ saves: what an async save really costs the loop, background
                        writing competing for the same cores included (the last save has K
                        steps to finish before the clock stops)
Steps and saves are timed after a warm-up (compilation excluded); each figure is the median.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import harness
import jax

from lladax.config import preset
from lladax.store import checkpoint, integrity, layout
from lladax.train.run_config import TrainConfig


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def time_saves(mgr, step, state, batch, meta, saves: int) -> tuple[Any, dict[str, list[float]]]:
    """(state, seconds per save): the synchronous save, the time the caller is blocked, and the
    checksums' share of it, over `saves` saves each after one more train step."""
    checkpoint.save(mgr, state, meta)  # warm-up: compiles the checksums, starts Orbax
    mgr.wait_until_finished()
    times: dict[str, list[float]] = {"sync": [], "block": [], "checksums": []}
    for _ in range(saves):
        state, m = step(state, batch)
        jax.block_until_ready(m)
        t0 = time.perf_counter()
        for tree in checkpoint.state_items(state).values():
            integrity.checksums(tree)
        times["checksums"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        checkpoint.save(mgr, state, meta)
        t1 = time.perf_counter()
        mgr.wait_until_finished()
        times["block"].append(t1 - t0)
        times["sync"].append(time.perf_counter() - t0)
    return state, times


def time_loops(mgr, step, state, batch, meta, n: int, every: int) -> tuple[list[float], ...]:
    """Wall seconds of `n` train steps without saving and with a save every `every` steps (not
    after the last), 3 runs each, interleaved so machine-speed drift hits both alike."""

    def steps(save: bool) -> float:
        nonlocal state
        t0 = time.perf_counter()
        for i in range(n):
            state, m = step(state, batch)
            if save and (i + 1) % every == 0 and i + 1 < n:
                checkpoint.save(mgr, state, meta)
        jax.block_until_ready(m)
        mgr.wait_until_finished()
        return time.perf_counter() - t0

    plain, saving = [], []
    for _ in range(3):
        plain.append(steps(False))
        saving.append(steps(True))
    return plain, saving


def main() -> None:
    ap = harness.parser(__doc__)
    harness.add_options(ap, preset="small", batch=32, seq=64)
    ap.add_argument("--saves", type=int, default=5)
    ap.add_argument("--every", type=int, default=4, help="steps between saves (overhead)")
    ap.add_argument("--ema", type=float, default=0.0, help="train.ema_decay (0 = no EMA)")
    args = ap.parse_args()

    cfg = preset(args.preset, remat_policy="none")
    tc = TrainConfig(steps=10_000, batch_size=args.batch, truncate_prob=0.0, ema_decay=args.ema)
    state, step = harness.jitted_train_step(cfg, tc)
    batch = {
        "tokens": jax.random.randint(jax.random.key(1), (args.batch, args.seq), 0, cfg.vocab_size)
    }
    state = harness.time_steps(step, state, [batch]).state  # compile
    meta = {"model": dataclasses.asdict(cfg)}
    state_bytes = sum(
        x.nbytes
        for x in jax.tree.leaves(state)
        if not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
    )
    n = args.every * (args.saves + 1)  # the last save has `every` steps to finish in
    with tempfile.TemporaryDirectory() as tmp:
        mgr = layout.manager(tmp, keep=2)
        state, saves = time_saves(mgr, step, state, batch, meta, args.saves)
        on_disk = _size(Path(tmp) / "checkpoints" / str(int(state.step)))
        plain, saving = time_loops(mgr, step, state, batch, meta, n, args.every)
        mgr.close()

    step_s = min(plain) / n
    overhead = (statistics.median(saving) - statistics.median(plain)) / args.saves
    sync, block, cks = (statistics.median(saves[k]) for k in ("sync", "block", "checksums"))
    print(harness.device_line())
    print(
        f"model: {args.preset} ({cfg.param_count() / 1e6:.2f}M params), state "
        f"{state_bytes / 2**20:.1f} MiB in memory, {on_disk / 2**20:.1f} MiB on disk"
        f"{', EMA on' if args.ema else ''}; train step {step_s * 1e3:.0f} ms "
        f"(batch {args.batch} x seq {args.seq})"
    )
    print(
        f"synchronous save (write + commit): {sync * 1e3:.0f} ms "
        f"({state_bytes / 2**20 / sync:.0f} MiB/s)"
    )
    print(
        f"loop blocked by an async save:     {block * 1e3:.0f} ms "
        f"({block / sync:.0%} of the synchronous save; checksums "
        f"{cks * 1e3:.0f} ms of it)"
    )
    print(
        f"measured loop overhead per save:   {overhead * 1e3:.0f} ms "
        f"({overhead / step_s:.2f} train steps; {args.saves} saves every {args.every} "
        f"steps, median of 3 interleaved runs)"
    )


if __name__ == "__main__":
    main()
