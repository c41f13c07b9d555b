"""Input pipeline tokens/s vs train-step tokens/s for one config, measured in the same run.

    python benchmarks/pipeline_bench.py [--config configs/small.py] [--workers 2] [--batches 300]
                                        [--source DIR]   (e.g. a `lladax data prepare` output)

The pipeline is `pipeline.make_batches(..., pack=True)` on the config's source, seq_len and batch
size, timed over `--batches` batches after the first (which pays for worker start-up), in-process
and with `--workers` grain worker processes. The train step is `trainer.jit_train_step` for the
same config fed the tokens of those packed batches (the segment ids cost the step nothing
measurable on these sizes), timed as the median of `--steps` steps after compilation.
Tokens are batch x seq_len positions (what a step consumes); the fill (non-padding share) is
printed too. The pipeline must not be the bottleneck: ratio = pipeline / train >= 5.
"""

from __future__ import annotations

import sys
import time

import harness
import jax
import numpy as np

from lladax.data import pipeline
from lladax.data.tokenizer import load_tokenizer
from lladax.train.config_files import load_config_file
from lladax.train.run_config import TrainConfig, model_config_from


def time_pipeline(tok, config, batch_size: int, workers: int, n: int) -> dict[str, float]:
    """Start-up seconds (first batch), batches/s and positions/s over the next `n` batches."""
    t0 = time.perf_counter()
    it = pipeline.make_batches(
        tok,
        split="train",
        batch_size=batch_size,
        **{**pipeline.options_from_config(config.data), "pack": True, "workers": workers},
    )
    first = next(it)
    startup = time.perf_counter() - t0
    fill, t0 = [], time.perf_counter()
    for _ in range(n):
        fill.append(float((next(it)["segment_ids"] > 0).mean()))
    dt = time.perf_counter() - t0
    it.close()
    return {
        "startup_s": startup,
        "tokens_per_s": n * first["tokens"].size / dt,
        "fill": float(np.mean(fill)),
    }


def time_train_step(tok, config, steps: int) -> dict[str, float]:
    cfg = model_config_from(config.model)
    tc = TrainConfig.from_config(config.train)
    state, step = harness.jitted_train_step(cfg, tc)
    it = pipeline.make_batches(
        tok,
        split="train",
        batch_size=tc.batch_size,
        **{**pipeline.options_from_config(config.data), "pack": True},
    )
    batches = [jax.device_put({"tokens": next(it)["tokens"]}) for _ in range(steps + 1)]
    median = harness.time_steps(step, state, batches).median
    return {"step_s": median, "tokens_per_s": tc.batch_size * config.data.seq_len / median}


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--config", default="configs/small.py")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=300)
    harness.add_options(parser, steps=10)
    parser.add_argument("--source", default=None, help="override config.data.source")
    args = parser.parse_args()

    config = load_config_file(args.config)
    if args.source:
        config.data.source = args.source
    cfg = model_config_from(config.model)
    tok = load_tokenizer(config.data.tokenizer or "embedded", vocab_size=cfg.vocab_size)
    batch = config.train.batch_size
    print(f"{harness.device_line()}, python {sys.version.split()[0]}")
    print(
        f"config: {args.config}, batch {batch} x seq {config.data.seq_len}, "
        f"source {config.data.source!r}, packed"
    )
    pipe = {}
    for w in (0, args.workers):
        pipe[w] = r = time_pipeline(tok, config, batch, w, args.batches)
        print(
            f"{'pipeline, ' + str(w) + ' workers':>24}: {r['tokens_per_s']:10,.0f} tokens/s  "
            f"(first batch {r['startup_s']:.1f} s, fill {r['fill']:.1%})",
            flush=True,
        )
    step = time_train_step(tok, config, args.steps)
    print(
        f"{'train step (median)':>24}: {step['tokens_per_s']:10,.0f} tokens/s  "
        f"({step['step_s'] * 1e3:.0f} ms/step)"
    )
    ratio = pipe[args.workers]["tokens_per_s"] / step["tokens_per_s"]
    print(f"{'ratio (workers / train)':>24}: {ratio:10.1f}x  (target >= 5x)")


if __name__ == "__main__":
    main()
