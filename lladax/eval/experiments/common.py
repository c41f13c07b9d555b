"""What every experiment shares: the options every one takes (--seeds, --out, --overwrite,
--no-plot) and their checks, training a model on in-memory token rows with the package's own
train step, confidence intervals over seeds, and writing the JSON result and the plot.

Every check here runs before any model is built: a refused command costs milliseconds and
changes nothing on disk. The JSON result is written (atomically) before the plot is drawn, so a
plotting failure never loses minutes of compute."""

from __future__ import annotations

import argparse
import datetime
import io
import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from lladax.config import ModelConfig
from lladax.files import atomic_write
from lladax.train import trainer
from lladax.train.run_config import TrainConfig

# Two-sided 95 % Student-t quantiles by degrees of freedom (seeds - 1); 1.96 beyond the table.
_T975 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
}
INSTALL_PLOT = "uv sync --extra notebooks"


class PlotError(RuntimeError):
    """Drawing the plot failed after the JSON result was written; the message names the JSON."""


class Stopped(Exception):  # a stop request, not a failure: no "Error" suffix
    """A training run inside the experiment was stopped by a signal (the training loop catches
    SIGTERM/SIGINT and returns early): the experiment stops too and writes nothing, rather than
    scoring a half-trained model as if it were finished."""

    def __init__(self, reason: str, where: str) -> None:
        super().__init__(
            f"stopped by {reason} during {where}: nothing was written; rerun the "
            "command to start again"
        )
        self.reason = reason


def mean_ci(values: Sequence[float]) -> dict[str, float]:
    """Mean and 95 % confidence half-width (Student t over the values, e.g. one per seed)."""
    x = np.asarray(values, np.float64)
    if x.size < 2:
        return {"mean": float(x.mean()), "ci95": float("nan"), "n": int(x.size)}
    half = _T975.get(x.size - 1, 1.96) * x.std(ddof=1) / math.sqrt(x.size)
    return {"mean": float(x.mean()), "ci95": float(half), "n": int(x.size)}


def experiment_parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of `lladax experiment NAME`, headed by the experiment's docstring as written;
    the experiment adds its own options, then `add_common_options`."""
    return argparse.ArgumentParser(
        prog=f"lladax experiment {name}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_common_options(ap: argparse.ArgumentParser, seeds: list[int]) -> None:
    """--seeds (alias --seed), --out, --overwrite, --no-plot: the options every experiment has."""
    ap.add_argument(
        "--seeds",
        "--seed",
        dest="seeds",
        type=int,
        nargs="+",
        default=seeds,
        help="one run per seed; tables report mean ± 95 %% CI over them",
    )
    ap.add_argument("--out", default="docs/experiments", help="directory for NAME.json/.png")
    ap.add_argument(
        "--overwrite",
        action="store_true",
        help="replace NAME.json/.png left in --out by an earlier run",
    )
    ap.add_argument(
        "--no-plot", action="store_true", help="write only NAME.json (no matplotlib needed)"
    )


def check_common(args: argparse.Namespace, name: str) -> None:
    """Refuse bad --seeds, a missing matplotlib and an unusable --out before any work."""
    repeated = sorted({s for s in args.seeds if args.seeds.count(s) > 1})
    if repeated:
        raise ValueError(
            f"--seeds repeats {' '.join(map(str, repeated))}: a confidence interval "
            "needs distinct seeds; pass each seed once"
        )
    bad = [s for s in args.seeds if not 0 <= s < 2**63]  # jax.random.key's range
    if bad:
        raise ValueError(f"--seeds {bad[0]} must be an integer in [0, 2**63): pass another seed")
    if not args.no_plot:
        check_plotting()
    check_out(args.out, name, plot=not args.no_plot, overwrite=args.overwrite)


def check_at_least(args: argparse.Namespace, **minimum: float) -> None:
    """Refuse an option below its minimum, e.g. check_at_least(args, steps=1, batch_size=1)."""
    for key, low in minimum.items():
        value = getattr(args, key)
        if value < low:
            flag = "--" + key.replace("_", "-")
            raise ValueError(f"{flag} {value} is too small: pass {flag} {low} or more")


def check_plotting() -> None:
    """matplotlib is an optional extra: say how to get it (or skip the plot) before any work."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ValueError(
            f"matplotlib is not installed and the plot needs it: install it with "
            f"`{INSTALL_PLOT}`, or pass --no-plot to write only the JSON"
        ) from None


def _is_own_result(path: Path, name: str) -> bool:
    """True when `path` is a JSON result of experiment `name` (what this tool writes)."""
    try:
        return json.loads(path.read_text()).get("experiment") == name
    except (OSError, ValueError, AttributeError):
        return False


def check_out(out: str | os.PathLike, name: str, *, plot: bool, overwrite: bool) -> Path:
    """Check that NAME.json (and NAME.png) may be written into directory `out`.

    `out` may be absent (it is created when the result is written) but its nearest existing
    ancestor must be a writable directory. Files of these names already there are replaced only
    when they are this experiment's own earlier result AND `overwrite` is set.
    """
    p = Path(os.path.expanduser(os.fspath(out)))
    if p.exists() and not p.is_dir():
        raise ValueError(f"--out {p} is a file, not a directory: pass a directory for {name}.json")
    base = p
    while not base.exists():
        base = base.parent
    if not base.is_dir():
        raise ValueError(f"--out {p} cannot be created ({base} is a file): pass another directory")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ValueError(
            f"--out {p} is not writable ({base} does not permit writing): pass a "
            "directory you can write to"
        )
    targets = [p / f"{name}.json"] + ([p / f"{name}.png"] if plot else [])
    own = _is_own_result(targets[0], name)
    for target in targets:
        if not target.exists() and not target.is_symlink():
            continue
        if not own or not target.is_file():
            raise ValueError(
                f"--out {p} holds a {target.name} that is not a lladax {name} "
                "result: refusing to replace it; pass another --out"
            )
        if not overwrite:
            raise ValueError(
                f"--out {p} already holds {target.name} from an earlier run: pass "
                "--overwrite to replace it, or another --out"
            )
    return p


def train_rows(
    cfg: ModelConfig,
    tc: TrainConfig,
    sample_batch: Callable[[np.random.Generator], np.ndarray],
    *,
    seed: int,
    log: Callable[[str], None] = print,
) -> tuple[Any, list]:
    """Train from scratch with `trainer.train_step` on batches from `sample_batch(rng)` ([batch,
    seq] int32); returns (params, [(step, loss)] every tc.steps // 10 steps)."""
    optimizer = trainer.make_optimizer(tc)
    state = trainer.init_state(cfg, tc, optimizer, jax.random.key(seed))
    step_fn = trainer.jit_train_step(cfg, tc, optimizer)
    rng = np.random.default_rng(seed)
    curve, every, t0 = [], max(1, tc.steps // 10), time.perf_counter()
    for step in range(1, tc.steps + 1):
        state, metrics = step_fn(state, {"tokens": sample_batch(rng)})
        if step % every == 0 or step == tc.steps:
            curve.append((step, float(metrics["loss"])))
    log(
        f"  {cfg.kind:>14}: {tc.steps} steps, final loss {curve[-1][1]:.3f} "
        f"({time.perf_counter() - t0:.0f} s)"
    )
    return state.params, curve


def provenance(command: str, seeds: Sequence[int]) -> dict[str, Any]:
    """Where a result came from: date, machine, command, seeds, library versions."""
    import flax

    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()} {jax.devices()[0].device_kind}, "
        f"{jax.device_count()} device(s)",
        "command": command,
        "seeds": list(seeds),
        "jax": jax.__version__,
        "flax": flax.__version__,
    }


def _finite(x: Any) -> Any:
    """NaN/inf -> None (JSON null): a one-seed CI is undefined, and strict JSON has no NaN."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_result(
    out_dir: str | Path, name: str, result: dict[str, Any], plot: Callable[[Any], None] | None
) -> list[Path]:
    """Write `<name>.json`, then `<name>.png` drawn by `plot(figure)` (skipped when None).

    Raises PlotError (naming the JSON, which is already saved) when drawing fails."""
    out = Path(os.path.expanduser(os.fspath(out_dir)))
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / f"{name}.json", out / f"{name}.png"
    # files.atomic_write: a kill at any moment leaves the old file or the complete new one.
    atomic_write(json_path, json.dumps(_finite(result), indent=1, allow_nan=False) + "\n")
    if plot is None:
        return [json_path]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=(9, 4))
        try:
            plot(fig)
            fig.tight_layout()
            png = io.BytesIO()
            fig.savefig(png, dpi=110, format="png")
            atomic_write(png_path, png.getvalue())
        finally:
            plt.close(fig)
    except Exception as e:  # any plotting failure: the computed result is safe, say where
        raise PlotError(
            f"the result is saved in {json_path}, but drawing {png_path.name} failed "
            f"({type(e).__name__}: {e}); rerun with --no-plot, or fix matplotlib "
            f"(`{INSTALL_PLOT}`)"
        ) from e
    return [json_path, png_path]


def finish(
    name: str,
    argv: list[str] | None,
    args: argparse.Namespace,
    body: dict[str, Any],
    plot: Callable[[dict[str, Any]], Callable[[Any], None]],
) -> dict[str, Any]:
    """The result of experiment `name` (settings, provenance, then `body`), written by
    `write_result` with the figure `plot(result)` unless --no-plot; returns the result."""
    result = {
        "experiment": name,
        "settings": vars(args),
        "provenance": provenance(f"lladax experiment {name} " + " ".join(argv or []), args.seeds),
        **body,
    }
    write_result(args.out, name, result, None if args.no_plot else plot(result))
    return result


def run_seeds(
    name: str,
    argv: list[str] | None,
    args: argparse.Namespace,
    run_seed: Callable,
    summarize: Callable,
    plot: Callable,
    log: Callable = print,
) -> dict[str, Any]:
    """`run_seed(seed, args, log)` for every --seeds value, then `finish` with the per-seed
    results and their `summarize(per_seed)` (mean ± CI)."""
    per_seed = []
    for seed in args.seeds:
        log(f"seed {seed}")
        per_seed.append(run_seed(seed, args, log))
    return finish(name, argv, args, {"per_seed": per_seed, "summary": summarize(per_seed)}, plot)
