"""Train-step throughput and MFU against a matmul peak measured in the same run.

    python benchmarks/train_bench.py [--preset small] [--batch 16] [--seq 128] [--remat none]

Prints model TFLOP/s (training FLOPs from `ModelConfig.flops_per_token`: 6·N plus bidirectional
attention, recompute not counted), tokens/s, and MFU = model FLOP/s ÷ the same-run jitted matmul
peak of the device (the best of several [n, n] @ [n, n] in the model's compute dtype).
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import jax.numpy as jnp

from lladax.config import preset
from lladax.train import trainer


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--remat", default="none")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--matmul-n", type=int, default=1024)
    args = parser.parse_args()

    cfg = preset(args.preset, remat_policy=args.remat, dtype=args.dtype)
    tc = trainer.TrainConfig(steps=1000, batch_size=args.batch, truncate_prob=0.0)
    opt = trainer.make_optimizer(tc)
    state = trainer.init_state(cfg, tc, opt, jax.random.key(0))
    step = trainer.jit_train_step(cfg, tc, opt)
    tokens = jax.random.randint(jax.random.key(1), (args.batch, args.seq), 0, cfg.vocab_size)
    batch = {"tokens": tokens}
    state, m = step(state, batch)  # compile
    jax.block_until_ready(m)

    peak = trainer.measure_matmul_peak(args.matmul_n, jnp.dtype(args.dtype))
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        state, m = step(state, batch)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    peak_after = trainer.measure_matmul_peak(args.matmul_n, jnp.dtype(args.dtype))
    peak = max(peak, peak_after)
    best = sorted(times)[len(times) // 2]  # median step
    tokens_per_step = args.batch * args.seq
    flops = cfg.flops_per_token(args.seq) * tokens_per_step
    print(
        f"device: {jax.devices()[0].device_kind} x{jax.device_count()}  "
        f"({platform.processor() or platform.machine()}), jax {jax.__version__}"
    )
    print(
        f"model: {args.preset} ({cfg.param_count() / 1e6:.2f}M params), batch {args.batch} x "
        f"seq {args.seq}, {args.dtype}, remat={args.remat}"
    )
    print(f"{'matmul peak':>22}: {peak / 1e9:8.1f} GFLOP/s  (n={args.matmul_n})")
    print(f"{'train step (median)':>22}: {best * 1e3:8.1f} ms")
    print(f"{'tokens/s':>22}: {tokens_per_step / best:8.0f}")
    print(
        f"{'model FLOP/s':>22}: {flops / best / 1e9:8.1f} GFLOP/s "
        f"({flops / best / 1e12:.4f} TFLOP/s)"
    )
    print(f"{'MFU vs same-run peak':>22}: {flops / best / peak:8.1%}")


if __name__ == "__main__":
    main()
