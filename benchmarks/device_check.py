"""The one prepared accelerator check: train-step MFU and sampler speed on `llada_1b` shapes.

    python benchmarks/device_check.py --out device_check.md          # a GPU: under 8 minutes
    python benchmarks/device_check.py --tiny --out /tmp/check.md      # any CPU: seconds (tested)

A session lent a GPU runs `benchmarks/device_check.sh` as it is and pastes the table into
docs/benchmarks.md. Rows, all from ONE process (ratios are same-run):

  matmul      the jitted [n, n] @ [n, n] peak of the device in the compute dtype (same run)
  train xla   `train_step` of llada_1b (bf16 compute, f32 params, AdamW), dense XLA attention
  train cudnn the same step with cuDNN flash attention (GPU only; "n/a" elsewhere)
  sample      `sampling.generate` (exact, one token per step) on random llada_1b weights
  fast        `fast_sampling.generate` (dual cache + threshold 0.9), same prompts

MFU is model FLOPs (`ModelConfig.flops_per_token`, recompute not counted) over the data-sheet
peak where one is known, and over the same-run matmul peak always. Random weights are drawn with a
larger init std so logits are peaked as in a trained model (the fast sampler's threshold then
commits several tokens per step, as it does on real checkpoints); the sampler rows report
generated tokens/s and model evaluations (NFE) per row.

Needs only jax, flax, optax and numpy (not grain or ml-collections), so it runs on a GPU image's
own Python with PYTHONPATH set to the repository.
"""

from __future__ import annotations

import dataclasses
import datetime
import sys
from typing import Any

import harness
import jax
import numpy as np

from lladax.config import ModelConfig, preset
from lladax.diffusion import fast_sampling, sampling
from lladax.model import transformer
from lladax.train.run_config import TrainConfig
from lladax.train.throughput import peak_flops_per_device


@dataclasses.dataclass(frozen=True)
class Shapes:
    """Everything that differs between the real check and the CPU smoke run."""

    preset: str
    batch: int
    seq: int
    matmul_n: int
    train_steps: int
    prompt: int
    gen: int
    block: int
    sample_batches: tuple[int, ...]


FULL = Shapes(
    "llada_1b",
    batch=8,
    seq=2048,
    matmul_n=8192,
    train_steps=5,
    prompt=64,
    gen=256,
    block=32,
    sample_batches=(1, 8),
)
TINY = Shapes(
    "tiny",
    batch=8,
    seq=64,
    matmul_n=256,
    train_steps=2,
    prompt=8,
    gen=16,
    block=8,
    sample_batches=(2,),
)


def train_row(cfg: ModelConfig, shapes: Shapes, peaks: dict[str, float]) -> dict[str, Any]:
    """One timed train step of `cfg` ([batch, seq] random tokens), as a table row."""
    tc = TrainConfig(steps=1000, batch_size=shapes.batch, truncate_prob=0.0, warmup_steps=1)
    state, step = harness.jitted_train_step(cfg, tc)
    tokens = jax.random.randint(jax.random.key(1), (shapes.batch, shapes.seq), 5, cfg.vocab_size)
    run = harness.time_steps(step, state, [{"tokens": tokens}] * (shapes.train_steps + 1))
    step_s = run.median
    flops = cfg.flops_per_token(shapes.seq) * shapes.batch * shapes.seq / step_s
    return {
        "row": f"train {cfg.attention_impl}",
        "seconds": step_s,
        "compile_s": run.compile_s,
        "tokens_per_s": shapes.batch * shapes.seq / step_s,
        "tflops": flops / 1e12,
        **{f"mfu_{k}": flops / v for k, v in peaks.items()},
        "loss": float(run.metrics["loss"]),
    }


def sample_rows(cfg: ModelConfig, shapes: Shapes, batch: int) -> list[dict[str, Any]]:
    """Exact and fast sampler rows for one batch size (same prompts, same weights)."""
    params = transformer.init_params(cfg, jax.random.key(2))
    rng = np.random.default_rng(batch)
    prompt = rng.integers(5, cfg.vocab_size, size=(batch, shapes.prompt)).astype(np.int32)
    common = dict(gen_length=shapes.gen, block_length=shapes.block, steps=shapes.gen)
    exact_s, _ = harness.best_time(lambda: sampling.generate(params, cfg, prompt, **common), 2)
    fast_s, (_, stats) = harness.best_time(
        lambda: fast_sampling.generate(
            params, cfg, prompt, **common, cache="dual", threshold=0.9, return_stats=True
        ),
        2,
    )
    nfe = float(np.mean(np.asarray(stats["nfe"])))
    toks = batch * shapes.gen
    return [
        {
            "row": f"sample exact b{batch}",
            "seconds": exact_s,
            "tokens_per_s": toks / exact_s,
            "nfe": float(shapes.gen),
        },
        {
            "row": f"sample fast b{batch}",
            "seconds": fast_s,
            "tokens_per_s": toks / fast_s,
            "nfe": nfe,
            "speedup": exact_s / fast_s,
        },
    ]


COLUMNS = [
    "row",
    "s (step or run)",
    "compile s",
    "tokens/s",
    "model TFLOP/s",
    "MFU (sheet)",
    "MFU (same-run matmul)",
    "NFE/row",
    "speed-up",
]


def _cell(value: Any, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def render(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The markdown block pasted into docs/benchmarks.md."""
    lines = [
        f"Device check {meta['date']}: {meta['device']} ×{meta['devices']}, jax "
        f"{meta['jax']}, `{meta['command']}`; {meta['model']}. Same-run matmul peak "
        f"{meta['matmul_tflops']:.1f} TFLOP/s ({meta['dtype']}, n={meta['matmul_n']}); "
        f"data-sheet peak {meta['sheet_tflops'] or 'unknown'}.",
        "",
        harness.table_header(COLUMNS),
    ]
    for r in rows:
        if r.get("skipped"):
            lines.append(harness.table_row([r["row"], f"n/a ({r['skipped']})"] + [""] * 7))
            continue
        lines.append(
            harness.table_row(
                [
                    r["row"],
                    _cell(r["seconds"], ".4f"),
                    _cell(r.get("compile_s"), ".1f"),
                    _cell(r["tokens_per_s"], ",.0f"),
                    _cell(r.get("tflops"), ".1f"),
                    _cell(r.get("mfu_sheet"), ".1%"),
                    _cell(r.get("mfu_matmul"), ".1%"),
                    _cell(r.get("nfe"), ".1f"),
                    _cell(r.get("speedup"), ".2f") + ("x" if "speedup" in r else ""),
                ]
            )
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = harness.parser(__doc__)
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run on the tiny preset")
    ap.add_argument("--out", default=None, help="write the markdown table here (and .json)")
    args = ap.parse_args(argv)
    shapes = TINY if args.tiny else FULL
    on_gpu = jax.default_backend() == "gpu"
    dtype = "float32" if args.tiny else "bfloat16"
    base = preset(shapes.preset, dtype=dtype, param_dtype="float32", remat_policy="dots_no_batch")
    sheet, source = peak_flops_per_device()
    matmul = harness.same_run_peak(shapes.matmul_n, dtype)
    peaks = {"matmul": matmul} | ({"sheet": sheet} if "data sheet" in source else {})
    rows = [train_row(base.replace(attention_impl="xla"), shapes, peaks)]
    if on_gpu:
        rows.append(train_row(base.replace(attention_impl="cudnn"), shapes, peaks))
    else:
        rows.append({"row": "train cudnn", "skipped": "needs a GPU"})
    sample_cfg = base.replace(init_std=0.15, remat_policy="none")
    for batch in shapes.sample_batches:
        rows += sample_rows(sample_cfg, shapes, batch)
    meta = {
        "date": datetime.date.today().isoformat(),
        "device": jax.devices()[0].device_kind,
        "devices": jax.device_count(),
        "jax": jax.__version__,
        "command": "benchmarks/device_check.sh" + (" --tiny" if args.tiny else ""),
        "model": f"{shapes.preset} ({base.param_count() / 1e6:,.1f}M params), train "
        f"[{shapes.batch}, {shapes.seq}] {dtype}, sampler prompt {shapes.prompt} "
        f"gen {shapes.gen} block {shapes.block}",
        "matmul_tflops": matmul / 1e12,
        "matmul_n": shapes.matmul_n,
        "dtype": dtype,
        "sheet_tflops": sheet / 1e12 if "sheet" in peaks else None,
    }
    table = render(meta, rows)
    print(table)
    if args.out:
        harness.write_report(args.out, table, {"meta": meta, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
