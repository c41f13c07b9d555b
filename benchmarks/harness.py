"""What the benchmark scripts share: their common options, the same-run matmul peak their figures
are scaled by, timing that leaves compilation out, and output as markdown rows and JSON records.

Benchmarks are scripts (`python benchmarks/<name>.py`): Python puts their directory first on
`sys.path`, so each imports this module as `import harness`.

    ap = harness.parser(__doc__)
    harness.add_options(ap, preset="small", batch=16, repeats=3)   # the shared flags, with defaults
    peak = harness.same_run_peak(2048)                             # FLOP/s of a jitted matmul, now
    seconds, out = harness.best_time(lambda: run(...), args.repeats)
    print(harness.table_header(["batch", "s"])); print(harness.table_row([8, f"{seconds:.2f}"]))
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lladax.train.throughput import measure_matmul_peak

REQUIRED = object()  # `add_options(ap, checkpoint=REQUIRED)`: the flag has no default

# The options several benchmarks take: type, nargs and help; each script gives its own default.
OPTIONS: dict[str, dict[str, Any]] = {
    "checkpoint": dict(help="a `lladax train` run directory or a Hugging Face directory"),
    "source": dict(help="where held-out documents (prompts) come from"),
    "preset": dict(help="model preset (lladax.config.PRESETS)"),
    "batch": dict(type=int, help="rows per batch"),
    "batches": dict(type=int, nargs="+", help="batch sizes, one table row (or table) each"),
    "seq": dict(type=int, help="tokens per row"),
    "steps": dict(type=int, help="timed train steps after the compiling one"),
    "prompt_len": dict(type=int, help="prompt tokens"),
    "gen": dict(type=int, help="generated tokens (sampler gen_length)"),
    "block": dict(type=int, help="sampler block_length"),
    "repeats": dict(type=int, help="timed runs after a compiling warm-up; the best counts"),
    "seed": dict(type=int, help="random seed"),
}


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An ArgumentParser whose --help prints the script's docstring as written."""
    return argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def add_options(ap: argparse.ArgumentParser, **defaults: Any) -> None:
    """Add the shared `OPTIONS` named by the keywords (`prompt_len` is `--prompt-len`), each with
    the given default (`REQUIRED`: a required flag)."""
    for name, default in defaults.items():
        spec = dict(OPTIONS[name])
        if default is REQUIRED:
            spec["required"] = True
        else:
            spec["default"] = default
        ap.add_argument("--" + name.replace("_", "-"), **spec)


# --- the machine -------------------------------------------------------------------------------
def same_run_peak(n: int = 2048, dtype: Any = "float32") -> float:
    """FLOP/s of the best jitted [n, n] @ [n, n] in `dtype` on the default device, measured now:
    ratios against it are taken within one process, whatever else loads the machine."""
    return measure_matmul_peak(n, jnp.dtype(dtype))


def device_line() -> str:
    """`device: <kind> x<count> (<cpu>), jax <version>`: what the figures were measured on."""
    return (
        f"device: {jax.devices()[0].device_kind} x{jax.device_count()} "
        f"({platform.processor() or platform.machine()}), jax {jax.__version__}"
    )


# --- inputs ------------------------------------------------------------------------------------
def held_out_prompts(tok: Any, source: str, prompt_len: int, n: int) -> np.ndarray:
    """BOS + the first `prompt_len` - 1 tokens of the first `n` held-out documents of `source`
    that are that long: [n, prompt_len] int32, no padding."""
    from lladax.data import sources

    docs = [
        d for d in sources.load_documents(source, split="eval") if len(tok.encode(d)) >= prompt_len
    ][:n]
    return np.asarray([[tok.bos_id, *tok.encode(d)[: prompt_len - 1]] for d in docs], np.int32)


# --- timing ------------------------------------------------------------------------------------
def best_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """(best seconds of `repeats` calls after one warm-up call that compiles, the last output);
    each call is timed until its outputs are ready on the device."""
    out = jax.block_until_ready(fn())
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return best, out


def interleaved_best_times(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Best wall time of each (already compiled) function over `rounds` rounds that run every
    function once in turn, so load changes on a shared machine hit all of them alike."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


@dataclasses.dataclass
class StepTimes:
    """A timed run of a train step: the state and metrics after it, the compiling first step's
    seconds and each later step's seconds."""

    state: Any
    metrics: dict[str, Any]
    compile_s: float
    times: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def jitted_train_step(cfg: Any, tc: Any) -> tuple[Any, Callable]:
    """(fresh TrainState from key 0, the donated jitted train step) for model `cfg`, run `tc`."""
    from lladax.train import trainer

    opt = trainer.make_optimizer(tc)
    return trainer.init_state(cfg, tc, opt, jax.random.key(0)), trainer.jit_train_step(cfg, tc, opt)


def time_steps(step: Callable, state: Any, batches: Iterable[dict[str, Any]]) -> StepTimes:
    """Run `step` on every batch in turn, each step waited for: the first compiles, the others
    are timed one by one."""
    times, compile_s = [], None
    for batch in batches:
        t0 = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        if compile_s is None:
            compile_s = time.perf_counter() - t0
        else:
            times.append(time.perf_counter() - t0)
    return StepTimes(state, metrics, compile_s, times)


# --- output ------------------------------------------------------------------------------------
def table_row(cells: Sequence[Any]) -> str:
    """`| a | b |`: one markdown table row."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def table_header(columns: Sequence[str]) -> str:
    """The header row and the `|---|` line of a markdown table."""
    return table_row(columns) + "\n" + "|---" * len(columns) + "|"


def print_record(record: dict[str, Any]) -> None:
    """Print `record` as one JSON line (for collecting runs with grep / jq)."""
    print(json.dumps(record), flush=True)


def write_report(out: str | Path, markdown: str, record: dict[str, Any]) -> None:
    """Write `markdown` to `out` and `record` as JSON beside it (`out` with suffix .json)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown)
    out.with_suffix(".json").write_text(json.dumps(record, indent=1))
    print(f"wrote {out} and {out.with_suffix('.json')}", file=sys.stderr)
