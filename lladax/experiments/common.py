"""What every experiment shares: training a model on in-memory token rows with the package's own
train step, confidence intervals over seeds, and writing the JSON result and the plot."""

from __future__ import annotations

import datetime
import json
import math
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from lladax import train
from lladax.config import ModelConfig, TrainConfig

# Two-sided 95 % Student-t quantiles by degrees of freedom (seeds - 1); 1.96 beyond the table.
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262, 10: 2.228}


def mean_ci(values: Sequence[float]) -> dict[str, float]:
    """Mean and 95 % confidence half-width (Student t over the values, e.g. one per seed)."""
    x = np.asarray(values, np.float64)
    if x.size < 2:
        return {"mean": float(x.mean()), "ci95": float("nan"), "n": int(x.size)}
    half = _T975.get(x.size - 1, 1.96) * x.std(ddof=1) / math.sqrt(x.size)
    return {"mean": float(x.mean()), "ci95": float(half), "n": int(x.size)}


def train_rows(cfg: ModelConfig, tc: TrainConfig, sample_batch: Callable[[np.random.Generator],
               np.ndarray], *, seed: int, log: Callable[[str], None] = print) -> tuple[Any, list]:
    """Train from scratch with `train.train_step` on batches from `sample_batch(rng)` ([batch,
    seq] int32); returns (params, [(step, loss)] every tc.steps // 10 steps)."""
    optimizer = train.make_optimizer(tc)
    state = train.init_state(cfg, tc, optimizer, jax.random.key(seed))
    step_fn = train.jit_train_step(cfg, tc, optimizer)
    rng = np.random.default_rng(seed)
    curve, every, t0 = [], max(1, tc.steps // 10), time.perf_counter()
    for step in range(1, tc.steps + 1):
        state, metrics = step_fn(state, {"tokens": sample_batch(rng)})
        if step % every == 0 or step == tc.steps:
            curve.append((step, float(metrics["loss"])))
    log(f"  {cfg.kind:>14}: {tc.steps} steps, final loss {curve[-1][1]:.3f} "
        f"({time.perf_counter() - t0:.0f} s)")
    return state.params, curve


def provenance(command: str, seeds: Sequence[int]) -> dict[str, Any]:
    """Where a result came from: date, machine, command, seeds, library versions."""
    import flax

    return {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()} {jax.devices()[0].device_kind}, "
                       f"{jax.device_count()} device(s)",
            "command": command, "seeds": list(seeds), "jax": jax.__version__,
            "flax": flax.__version__}


def write_result(out_dir: str | Path, name: str, result: dict[str, Any],
                 plot: Callable[[Any], None]) -> tuple[Path, Path]:
    """Write `<name>.json` and `<name>.png` (drawn by `plot(axes)` on a fresh figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / f"{name}.json", out / f"{name}.png"
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    fig = plt.figure(figsize=(9, 4))
    plot(fig)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return json_path, png_path
