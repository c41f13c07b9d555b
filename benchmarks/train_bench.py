"""Train-step throughput and MFU against a matmul peak measured in the same run.

    python benchmarks/train_bench.py [--preset small] [--batch 16] [--seq 128] [--remat none]

Prints model TFLOP/s (training FLOPs from `ModelConfig.flops_per_token`: 6·N plus bidirectional
attention, recompute not counted), tokens/s, and MFU = model FLOP/s ÷ the same-run jitted matmul
peak of the device (the best of several [n, n] @ [n, n] in the model's compute dtype, measured
before and after the steps).
"""

from __future__ import annotations

import harness
import jax

from lladax.config import preset
from lladax.train.run_config import TrainConfig


def main() -> None:
    ap = harness.parser(__doc__)
    harness.add_options(ap, preset="small", batch=16, seq=128, steps=10)
    ap.add_argument("--remat", default="none")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--matmul-n", type=int, default=1024)
    args = ap.parse_args()

    cfg = preset(args.preset, remat_policy=args.remat, dtype=args.dtype)
    tc = TrainConfig(steps=1000, batch_size=args.batch, truncate_prob=0.0)
    state, step = harness.jitted_train_step(cfg, tc)
    tokens = jax.random.randint(jax.random.key(1), (args.batch, args.seq), 0, cfg.vocab_size)
    peak = harness.same_run_peak(args.matmul_n, args.dtype)
    best = harness.time_steps(step, state, [{"tokens": tokens}] * (args.steps + 1)).median
    peak = max(peak, harness.same_run_peak(args.matmul_n, args.dtype))
    tokens_per_step = args.batch * args.seq
    flops = cfg.flops_per_token(args.seq) * tokens_per_step
    print(harness.device_line())
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
