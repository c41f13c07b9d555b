"""Autoregressive vs LLaDA vs block diffusion on the default data, and AR -> block diffusion.

One model size (`--size`, scaling.py's sizes), every arm trained by `lladax.train.loop.run` from
`configs/small.py` (the same data, batches, optimizer and schedule), only the model changed:

  equal tokens  `--steps` steps each: autoregressive, diffusion (LLaDA) and block diffusion with
                every `--blocks` size (blocks aligned from position 0; a block >= seq_len 64 is
                one block per row, whose loss is LLaDA's: the same noise draw, the same forward)
  adaptation    the AR arm's run continued as block diffusion (`checkpoint.init_from` it) for
                `--adapt-steps` steps with `train.block_curriculum` = `--curriculum` (default
                LLaDA 2.0's warmup-stable-decay over block size: 1, 4, one block, then
                `--adapt-block`), vs block diffusion of that size from scratch for `--steps` +
                `--adapt-steps` steps: equal steps and tokens (the AR steps cost less compute,
                so the adapted arm trains on fewer FLOPs: both are reported)

Scores (scaling.py's): held-out nats per token, the exact NLL for AR and the ELBO bound for
diffusion and block diffusion (`trainer.eval_loss` with fixed keys averaged over
`--noise-draws`; for block diffusion the sum over blocks of each block's bound given the clean
earlier blocks), an UPPER bound on the model's NLL; and continuation ranking (`--pairs` held-out
contexts, real vs shuffled continuation: exact log p for AR, the Monte-Carlo ELBO of
`likelihood.log_likelihood_batch` otherwise). With several --seeds every arm is trained once
per seed; the summary is the mean ± 95 % CI over seeds, and the adaptation's gain over scratch
is also given per seed (paired).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from pathlib import Path
from typing import Any

import numpy as np

from lladax.eval.experiments import scaling
from lladax.eval.experiments.common import (
    add_common_options,
    check_at_least,
    check_common,
    experiment_parser,
    mean_ci,
    run_seeds,
)
from lladax.train import curriculum
from lladax.train.run_config import RunConfig

SCORES = ("train_loss", "heldout_loss", "ranking")


@dataclasses.dataclass(frozen=True)
class Arm:
    """One training run of a seed: its model, its steps, and where it starts from."""

    name: str  # "autoregressive", "diffusion", "bd4", ..., "ar_to_bd16", "bd16_scratch"
    part: str  # "equal_tokens" or "adaptation"
    kind: str
    block_size: int | None
    steps: int
    init_from: str = ""  # the arm (of the same seed) whose final params this run starts from
    curriculum: str = ""

    def model(self) -> dict[str, Any]:
        """The model overrides of this arm's config."""
        return {"kind": self.kind} | ({"block_size": self.block_size} if self.block_size else {})


def default_curriculum(adapt_steps: int, seq_len: int, block: int) -> str:
    """LLaDA 2.0's warmup-stable-decay over block size, from an AR start: block 1 and 4 for 10 %
    of the steps each, one block (`seq_len`) for 30 %, then `block` to the end."""
    warm, stable = max(1, adapt_steps // 10), max(1, adapt_steps * 3 // 10)
    return f"1:{warm},4:{warm},{seq_len}:{stable},{block}"


def arms(args: argparse.Namespace) -> list[Arm]:
    """The runs of one seed, in order (the adapted arm after the AR arm it starts from)."""
    out = [
        Arm("autoregressive", "equal_tokens", "autoregressive", None, args.steps),
        Arm("diffusion", "equal_tokens", "diffusion", None, args.steps),
        *(Arm(f"bd{b}", "equal_tokens", "block_diffusion", b, args.steps) for b in args.blocks),
    ]
    if args.adapt_steps:
        b = args.adapt_block
        out += [
            Arm(
                f"ar_to_bd{b}",
                "adaptation",
                "block_diffusion",
                b,
                args.adapt_steps,
                init_from="autoregressive",
                curriculum=args.curriculum,
            ),
            Arm(
                f"bd{b}_scratch", "adaptation", "block_diffusion", b, args.steps + args.adapt_steps
            ),
        ]
    return out


def arm_config(arm: Arm, seed: int, args: argparse.Namespace, workdir: Path) -> Any:
    """The run ConfigDict of `arm` (scaling.size_config at --size), its run dir under `workdir`."""
    config = scaling.size_config(
        args.size, seed, arm.steps, workdir / f"seed{seed}" / arm.name, args, **arm.model()
    )
    config.train.block_curriculum = arm.curriculum
    if arm.init_from:
        config.checkpoint.init_from = str(workdir / f"seed{seed}" / arm.init_from)
    return config


def train_flops(config: Any) -> float:
    """Training FLOPs of a run config (`ModelConfig.flops_per_token` × tokens), stage by stage of
    its block curriculum: a stage whose block covers the row is one block, LLaDA's one-copy
    forward, not the two-copy one."""
    run = RunConfig.from_config_dict(config)
    cfg, tc, seq = run.model, run.train, run.data.seq_len
    plan = curriculum.stages(tc.block_curriculum, cfg) or ((cfg.block_size, None),)
    flops, start = 0.0, 0
    for size, end in plan:
        stop = tc.steps if end is None else min(end, tc.steps)
        if size is None:  # autoregressive or diffusion
            stage = cfg
        elif size >= seq:  # one block: the plain (LLaDA) forward
            stage = cfg.replace(kind="diffusion", block_size=None)
        else:
            stage = cfg.replace(block_size=size)
        flops += max(0, stop - start) * tc.batch_size * seq * stage.flops_per_token(seq)
        start = stop
    return flops


def run_seed(
    seed: int, args: argparse.Namespace, log=print, *, workdir: Path, stream: np.ndarray
) -> dict[str, Any]:
    """Every arm of `seed`, trained and scored: {"seed", "runs": [one dict per arm]}."""
    runs: dict[str, dict[str, Any]] = {}
    for arm in arms(args):
        config = arm_config(arm, seed, args, workdir)
        where = f"the {arm.name} run of seed {seed}"
        scored = scaling.train_and_score(config, args, stream, seed, where)
        before = runs[arm.init_from] if arm.init_from else {"total_tokens": 0, "total_flops": 0}
        flops = train_flops(config)
        runs[arm.name] = {
            "arm": arm.name,
            "part": arm.part,
            "kind": arm.kind,
            "block_size": arm.block_size,
            "steps": arm.steps,
            "curriculum": arm.curriculum,
            **scored,
            "train_flops": flops,
            "total_tokens": before["total_tokens"] + scored["tokens"],
            "total_flops": before["total_flops"] + flops,
        }
        log(
            f"  {arm.name:>14} seed {seed}: {arm.steps} steps, held-out "
            f"{scored['heldout_loss']:.3f} nats/token, ranking {scored['ranking']:.0%}"
        )
    return {"seed": seed, "runs": list(runs.values())}


def summarize(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """ "arms": one row per arm (settings, then mean ± 95 % CI over seeds of each score);
    "adaptation": the adapted arm minus scratch per seed (held-out: scratch - adapted, so a
    positive gain favours adapting; ranking: adapted - scratch), mean ± CI; None without it."""
    by_arm: dict[str, list[dict[str, Any]]] = {}
    for seed in per_seed:
        for run in seed["runs"]:
            by_arm.setdefault(run["arm"], []).append(run)
    fixed = ("part", "kind", "block_size", "steps", "curriculum", "params", "total_tokens")
    rows = [
        {
            "arm": arm,
            **{k: group[0][k] for k in fixed},
            "total_flops": group[0]["total_flops"],
            "seeds": [s["seed"] for s in per_seed],
            **{k: mean_ci([r[k] for r in group]) for k in SCORES},
        }
        for arm, group in by_arm.items()
    ]
    adapted = [r for r in per_seed[0]["runs"] if r["part"] == "adaptation"]
    if not adapted:
        return {"arms": rows, "adaptation": None}
    ada, scratch = (by_arm[r["arm"]] for r in adapted)
    return {
        "arms": rows,
        "adaptation": {
            "adapted": adapted[0]["arm"],
            "scratch": adapted[1]["arm"],
            "heldout_gain": mean_ci(
                [s["heldout_loss"] - a["heldout_loss"] for a, s in zip(ada, scratch, strict=True)]
            ),
            "ranking_gain": mean_ci(
                [a["ranking"] - s["ranking"] for a, s in zip(ada, scratch, strict=True)]
            ),
        },
    }


def plot(result: dict[str, Any]):
    def draw(fig):
        rows, settings = result["summary"]["arms"], result["settings"]
        colors = {"equal_tokens": "tab:blue", "adaptation": "tab:orange"}
        panels = (
            ("heldout_loss", 1, "held-out nats / token", "Held-out loss (AR exact, others ELBO)"),
            (
                "ranking",
                100,
                "real > shuffled (%)",
                f"Continuation ranking, {settings['pairs']} pairs",
            ),
        )
        for i, (key, scale, ylabel, title) in enumerate(panels):
            ax = fig.add_subplot(1, 2, i + 1)
            for j, r in enumerate(rows):
                ax.errorbar(
                    [j],
                    [scale * r[key]["mean"]],
                    yerr=[scale * np.nan_to_num(r[key]["ci95"])],
                    marker="o",
                    color=colors[r["part"]],
                    capsize=4,
                )
                seeds = [run for s in result["per_seed"] for run in s["runs"]]
                values = [scale * run[key] for run in seeds if run["arm"] == r["arm"]]
                ax.scatter([j] * len(values), values, s=8, color="black", alpha=0.5, zorder=3)
            ax.set_xticks(range(len(rows)), [r["arm"] for r in rows], rotation=30, ha="right")
            ax.set_ylabel(ylabel)
            ax.set_title(title)
        fig.axes[1].axhline(50, color="grey", lw=0.8, ls=":")
        fig.suptitle(
            f"size {settings['size']}, {len(settings['seeds'])} seed(s), mean ± 95 % CI; blue: "
            "equal tokens, orange: AR→BD vs BD from scratch at equal steps"
        )

    return draw


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options, checked: every refusal happens here, before any model is built."""
    ap = experiment_parser("blocks", __doc__)
    ap.add_argument("--size", default="xs", choices=list(scaling.SIZES))
    ap.add_argument("--steps", type=int, default=300, help="steps of every equal-tokens arm")
    ap.add_argument("--blocks", type=int, nargs="*", default=[4, 16, 64], help="block sizes")
    ap.add_argument(
        "--adapt-steps", type=int, default=150, help="AR -> block diffusion steps (0: skip)"
    )
    ap.add_argument("--adapt-block", type=int, default=16, help="the adapted model's block size")
    ap.add_argument(
        "--curriculum",
        default=None,
        help="train.block_curriculum of the adaptation, SIZE:STEPS,...,SIZE "
        "(default: 1, 4, one block, then --adapt-block)",
    )
    scaling.add_scoring_options(ap)
    add_common_options(ap, seeds=[0])
    args = ap.parse_args(argv)
    repeated = sorted({b for b in args.blocks if args.blocks.count(b) > 1})
    if repeated:
        raise ValueError(f"--blocks repeats {' '.join(map(str, repeated))}: pass each size once")
    bad = [b for b in args.blocks if b < 1]
    if bad:
        raise ValueError(f"--blocks {bad[0]} must be a positive block size: pass e.g. 4")
    check_at_least(args, steps=1, adapt_steps=0, adapt_block=1)
    scaling.check_scoring_options(args)
    if args.adapt_steps:
        _check_curriculum(args)
    check_common(args, "blocks")
    return args


def _check_curriculum(args: argparse.Namespace) -> None:
    """Fill in the default --curriculum and refuse one the adaptation run cannot train."""
    seq_len = scaling.base_config().data.seq_len
    if args.curriculum is None:
        args.curriculum = default_curriculum(args.adapt_steps, seq_len, args.adapt_block)
        if args.adapt_steps < 4:
            raise ValueError(
                f"--adapt-steps {args.adapt_steps} is too few for the default curriculum "
                f"({args.curriculum}): pass --adapt-steps 4 or more, or a --curriculum"
            )
    arm = next(a for a in arms(args) if a.init_from)
    config = arm_config(arm, 0, args, Path("unused"))
    try:
        run = RunConfig.from_config_dict(config)
    except ValueError as e:
        raise ValueError(f"--curriculum {args.curriculum!r}: {e}") from None
    start = curriculum.last_stage_start(curriculum.stages(args.curriculum, run.model))
    if start >= args.adapt_steps:
        raise ValueError(
            f"--curriculum {args.curriculum!r} reaches its last stage (block "
            f"{args.adapt_block}) at step {start}, but --adapt-steps is {args.adapt_steps}: "
            f"pass --adapt-steps {start + 1} or more, or shorter stages"
        )


def main(argv: list[str] | None = None, log=print) -> dict[str, Any]:
    args = parse_args(argv)
    stream = scaling.scoring_stream(args)
    with scaling.runs_dir(args) as workdir:
        run = functools.partial(run_seed, workdir=workdir, stream=stream)
        return run_seeds("blocks", argv, args, run, summarize, plot, log)
