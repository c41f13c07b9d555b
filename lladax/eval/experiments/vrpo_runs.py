"""The training runs of `lladax experiment vrpo`: the SFT models it starts from (given, or
trained into --workdir and reused there once finished) and one preference run per (seed, arm).

Every run goes through `lladax.train.loop.run` with a config file of configs/: the diffusion SFT
model is configs/small.py (pretraining) then configs/sft_small.py; the autoregressive one is
configs/sft_small.py with `model.kind="autoregressive"` from scratch; a preference run is
configs/vrpo_small.py from the SFT run (`checkpoint.init_from`: its starting params and frozen
reference) on the seed's on-policy pair jsonl, with the arm's estimator.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lladax.eval.experiments.common import Stopped
from lladax.store import integrity, params_checkpoint
from lladax.train import loop
from lladax.train.config_files import load_config_file

ROOT = Path(__file__).resolve().parents[3]
KINDS = ("diffusion", "autoregressive")


def config_file(name: str) -> Any:
    """The ConfigDict of configs/`name`."""
    return load_config_file(str(ROOT / "configs" / name))


def finished(run_dir: Path, steps: int) -> bool:
    """True if `run_dir` holds a checkpoint at step >= `steps`."""
    try:
        return params_checkpoint.read_meta(run_dir)[0] >= steps
    except (integrity.CheckpointError, FileNotFoundError, ValueError):
        return False


def train_unless_finished(config: Any, where: str, log: Callable[[str], None]) -> None:
    """`loop.run(config)` unless its workdir already holds the last step (then it is reused);
    a signal stops the experiment (`Stopped` names `where`)."""
    run_dir, steps = Path(config.log.workdir), config.train.steps
    if finished(run_dir, steps):
        log(f"  reusing {where}: {run_dir} holds step {steps}")
        return
    t0 = time.perf_counter()
    config.log.progress = False
    out = loop.run(config)
    if out.get("stopped") not in (None, "stop_after"):
        raise Stopped(out["stopped"], where)
    log(f"  trained {where}: {steps} steps ({time.perf_counter() - t0:.0f} s)")


def late_mean(run_dir: Path, key: str) -> float:
    """Mean of `key` over the logged steps of the run's second half (metrics.jsonl)."""
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    values = [m[key] for m in lines if key in m]
    return float(np.mean(values[len(values) // 2 :]))


@dataclasses.dataclass(frozen=True)
class KindRuns:
    """The runs of one model kind: its SFT model and, under `root`, one directory per seed."""

    kind: str
    sft: Path
    root: Path

    def model(self) -> dict[str, Any]:
        """The SFT model's saved `ModelConfig` fields (the preference runs train that model)."""
        return params_checkpoint.read_meta(self.sft)[1]["model"]

    def seed_dir(self, seed: int) -> Path:
        return self.root / f"seed{seed}"

    def preference_config(self, arm: Any, seed: int, pairs: Path, args: argparse.Namespace):
        """configs/vrpo_small.py for `arm` of `seed` on the pair jsonl `pairs`."""
        c = config_file("vrpo_small.py")
        c.model.update(**self.model())
        c.data.update(source=str(pairs), seed=seed)
        c.preference.update(
            beta=args.beta,
            n_t=arm.n_t,
            n_yt=arm.n_yt,
            antithetic=arm.antithetic,
            nll_weight=args.nll_weight,
        )
        c.train.update(
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            warmup_steps=max(1, args.steps // 10),
            seed=seed,
        )
        c.eval.every = 0  # scored after training (exact match), not by the held-out loss
        c.checkpoint.update(every=0, init_from=str(self.sft))
        c.log.update(workdir=str(self.seed_dir(seed) / arm.name), every=max(1, args.steps // 20))
        return c

    def train(
        self, arm: Any, seed: int, pairs: Path, args: argparse.Namespace, log=print
    ) -> tuple[Any, dict[str, float]]:
        """(trained params, {"reward_accuracy", "score", "loss"}: means over the run's second
        half) of `arm` of `seed`."""
        config = self.preference_config(arm, seed, pairs, args)
        train_unless_finished(config, f"the {arm.name} run of seed {seed}", log)
        run_dir = Path(config.log.workdir)
        _, params = params_checkpoint.load_params(run_dir)
        keys = ("reward_accuracy", "score", "loss")
        return params, {k: late_mean(run_dir, k) for k in keys}


def diffusion_sft(args: argparse.Namespace, workdir: Path, log: Callable[[str], None]) -> Path:
    """--sft-run, or configs/small.py (--pretrain-steps) then configs/sft_small.py
    (--sft-steps) trained into `workdir` (each reused when finished)."""
    if args.sft_run:
        return Path(args.sft_run).expanduser()
    pre = config_file("small.py")
    pre.train.steps = args.pretrain_steps
    pre.log.update(workdir=str(workdir / "pretrain"))
    train_unless_finished(pre, "the diffusion pretraining run", log)
    sft = config_file("sft_small.py")
    sft.train.steps = args.sft_steps
    sft.eval.every = 0
    sft.checkpoint.update(every=0, init_from=str(workdir / "pretrain"))
    sft.log.update(workdir=str(workdir / "sft"))
    train_unless_finished(sft, "the diffusion SFT run", log)
    return workdir / "sft"


def ar_sft(args: argparse.Namespace, workdir: Path, log: Callable[[str], None]) -> Path:
    """--ar-sft-run, or configs/sft_small.py as an autoregressive model from scratch for
    --ar-sft-steps, trained into `workdir` (reused when finished)."""
    if args.ar_sft_run:
        return Path(args.ar_sft_run).expanduser()
    c = config_file("sft_small.py")
    c.model.kind = "autoregressive"
    c.train.update(steps=args.ar_sft_steps, seed=0)
    c.eval.every = 0
    c.checkpoint.update(every=0, init_from="")
    c.log.update(workdir=str(workdir / "ar_sft"), every=20)
    train_unless_finished(c, "the autoregressive SFT run", log)
    return workdir / "ar_sft"


def sft_runs(
    args: argparse.Namespace, workdir: Path, log: Callable[[str], None] = print
) -> dict[str, KindRuns]:
    """{kind: KindRuns} of both kinds, their SFT models ready."""
    return {
        "diffusion": KindRuns("diffusion", diffusion_sft(args, workdir, log), workdir / "vrpo"),
        "autoregressive": KindRuns("autoregressive", ar_sft(args, workdir, log), workdir / "ar"),
    }
