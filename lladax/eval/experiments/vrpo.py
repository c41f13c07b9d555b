"""Preference optimisation of the SFT demo model: LLaDA 1.5's VRPO ablation at small scale.

For each seed, on-policy pairs (`lladax.eval.preference_pairs`: training prompts of the SFT
tasks, chosen = the answer, rejected = the model's own wrong greedy reply, else a near miss) are
built from the SFT model, which then is preference-trained (`lladax.train.loop.run`, configs/
vrpo_small.py, the SFT model as the frozen reference) once per arm of the paper's ablation:

  naive        DPO with ELBO estimates: n_t = 1, n_yt = 1, independent noise
  budget       + sampling budget: n_t = 1, n_yt = 8 (one noise level, 8 masks)
  allocation   + optimal allocation: n_t = 8, n_yt = 1
  vrpo         + antithetic sampling (policy and reference on the same noise) = VRPO
  ar_dpo       DPO of the autoregressive baseline (exact log-probs) from its own SFT model on
               its own on-policy pairs

Scores: held-out exact match (eval-split prompts of the tasks, greedy, gen_length 8 as the SFT
demo) of the SFT model and of every arm; and the variance of each estimator's preference score
s = β·[(B̂π(y_w) − B̂ref(y_w)) − (B̂π(y_l) − B̂ref(y_l))] over `--draws` noise draws, averaged over
`--variance-pairs` held-out pairs, all on ONE (policy, reference) pair per seed: the seed's
vrpo-trained policy against the SFT reference, so the table compares estimators, not policies.
`--nll-weight` adds RPO's SFT term on the chosen answer to every arm (`preference.nll_weight`;
0, the default, is plain DPO as in LLaDA 1.5). Summaries: mean ± 95 % CI over seeds. The SFT
models are --sft-run / --ar-sft-run, or trained into --workdir (reused there when finished).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from lladax.data import instructions
from lladax.data import preference as pair_data
from lladax.diffusion import preference
from lladax.diffusion.sampler_config import SamplerConfig
from lladax.eval import preference_pairs
from lladax.eval.experiments import vrpo_runs
from lladax.eval.experiments.common import (
    add_common_options,
    check_at_least,
    check_common,
    experiment_parser,
    mean_ci,
    run_seeds,
)
from lladax.store.loading import load_model

TASKS = ("copy", "reverse")  # the SFT demo's tasks (configs/sft_small.py)


@dataclasses.dataclass(frozen=True)
class Arm:
    """One estimator setting of the ablation (`lladax.diffusion.preference`)."""

    name: str
    n_t: int
    n_yt: int
    antithetic: bool


ARMS = (
    Arm("naive", 1, 1, False),
    Arm("budget", 1, 8, False),
    Arm("allocation", 8, 1, False),
    Arm("vrpo", 8, 1, True),
)
AR_ARM = Arm("ar_dpo", 1, 1, False)  # the AR baseline's log-probs are exact: no noise


def reply_sampler(args: argparse.Namespace) -> SamplerConfig:
    """Greedy, one token per step, one block: the SFT demo's sampler at --gen-length."""
    return SamplerConfig(gen_length=args.gen_length, steps=args.gen_length)


def accuracy(params: Any, cfg: Any, tok: Any, items: list, args: argparse.Namespace) -> dict:
    """({task: exact match, "mean": over tasks}, replies) of the model on `items`."""
    replies = preference_pairs.greedy_replies(params, cfg, tok, items, reply_sampler(args))
    by_task = instructions.accuracy_by_task(items, replies)
    return {**by_task, "mean": float(np.mean(list(by_task.values())))}, replies


@functools.partial(jax.jit, static_argnames=("cfg", "n_t", "n_yt", "antithetic"))
def pair_scores(
    policy: Any,
    reference: Any,
    cfg: Any,
    batch: dict[str, jax.Array],
    key: jax.Array,
    *,
    beta: float,
    n_t: int,
    n_yt: int,
    antithetic: bool,
) -> jax.Array:
    """The score s of each pair of `batch` [pairs] under one noise draw from `key`: the train
    step's own estimator (`preference.preference_loss` on each pair alone, vmapped)."""
    keys = jax.random.split(key, batch["chosen"].shape[0])

    def one(pair: dict[str, jax.Array], k: jax.Array) -> jax.Array:
        single = jax.tree.map(lambda x: x[None], pair)
        _, metrics = preference.preference_loss(
            policy, reference, cfg, single, k, beta=beta, n_t=n_t, n_yt=n_yt, antithetic=antithetic
        )
        return metrics["score"]

    return jax.vmap(one)(batch, keys)


def score_variance(
    policy: Any,
    reference: Any,
    cfg: Any,
    batch: dict,
    arm: Arm,
    args: argparse.Namespace,
    seed: int,
) -> dict[str, float]:
    """{"variance": mean over pairs of the score's variance over --draws draws, "mean_score"}."""
    draws = np.stack(
        [
            np.asarray(
                pair_scores(
                    policy,
                    reference,
                    cfg,
                    batch,
                    jax.random.key(seed * 100_003 + d),
                    beta=args.beta,
                    n_t=arm.n_t,
                    n_yt=arm.n_yt,
                    antithetic=arm.antithetic,
                )
            )
            for d in range(args.draws)
        ]
    )  # [draws, pairs]
    return {
        "variance": float(np.mean(np.var(draws, axis=0, ddof=1))),
        "mean_score": float(np.mean(draws)),
    }


def heldout_pair_batch(tok: Any, rows: list[dict[str, str]], path: Path) -> dict:
    """The held-out pairs `rows` as one batch {"chosen", "rejected": [n, L], "prompt_lengths"},
    laid out as the preference runs' rows (configs/vrpo_small.py's seq_len, min_answer_len)."""
    preference_pairs.write_pairs(path, rows)
    data = vrpo_runs.config_file("vrpo_small.py").data
    batches = pair_data.make_preference_batches(
        tok,
        source=str(path),
        seq_len=data.seq_len,
        batch_size=len(rows),
        seed=0,
        split="all",
        num_buckets=1,
        min_answer_len=data.min_answer_len,
    )
    return {k: jax.numpy.asarray(v) for k, v in next(iter(batches)).items()}


def run_kind(
    kind_runs: vrpo_runs.KindRuns, arms: tuple[Arm, ...], seed: int, args, log
) -> tuple[dict, dict]:
    """Pairs, before / after accuracy of every arm of one model kind; (result, trained params)."""
    cfg, params, tok = load_model(str(kind_runs.sft))
    items = instructions.examples(TASKS, "eval", seed=seed, per_task=args.eval_per_task)
    before, replies = accuracy(params, cfg, tok, items, args)
    pairs = kind_runs.seed_dir(seed) / "pairs.jsonl"
    counts = preference_pairs.build_pairs(
        params, cfg, tok, pairs, tasks=TASKS, per_task=args.pairs_per_task, seed=seed,
        sampler=reply_sampler(args),
    )  # fmt: skip
    out = {"before": before, "pairs": counts.as_dict(), "arms": {}}
    trained = {}
    for arm in arms:
        t0 = time.perf_counter()
        trained[arm.name], train = kind_runs.train(arm, seed, pairs, args)
        after, _ = accuracy(trained[arm.name], cfg, tok, items, args)
        out["arms"][arm.name] = {"after": after, **train, "seconds": time.perf_counter() - t0}
        log(
            f"  {arm.name:>10} seed {seed}: exact match {before['mean']:.1%} -> "
            f"{after['mean']:.1%}, train reward acc {train['reward_accuracy']:.2f} "
            f"({time.perf_counter() - t0:.0f} s)"
        )
    heldout = preference_pairs.on_policy_pairs(items, replies, seed)[0]
    stride = max(1, len(heldout) // args.variance_pairs)
    out["heldout_pairs"] = heldout[::stride][: args.variance_pairs]
    return out, {"params": params, "cfg": cfg, "tok": tok, "trained": trained}


def run_seed(seed: int, args: argparse.Namespace, log=print, *, runs=None) -> dict[str, Any]:
    """Every arm of `seed`: {"seed", "diffusion": {...}, "autoregressive": {...},
    "variance": {arm: {"variance", "mean_score"}}}."""
    diff, models = run_kind(runs["diffusion"], ARMS, seed, args, log)
    ar, _ = run_kind(runs["autoregressive"], (AR_ARM,), seed, args, log)
    path = runs["diffusion"].seed_dir(seed) / "heldout_pairs.jsonl"
    batch = heldout_pair_batch(models["tok"], diff.pop("heldout_pairs"), path)
    ar.pop("heldout_pairs")
    policy = models["trained"]["vrpo"]
    variance = {}
    for arm in ARMS:
        t0 = time.perf_counter()
        variance[arm.name] = score_variance(
            policy, models["params"], models["cfg"], batch, arm, args, seed
        )
        log(
            f"  {arm.name:>10} seed {seed}: score variance {variance[arm.name]['variance']:.3g}"
            f" ({time.perf_counter() - t0:.0f} s)"
        )
    return {"seed": seed, "diffusion": diff, "autoregressive": ar, "variance": variance}


def summarize(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± 95 % CI over seeds: exact match before / after and its change per arm (paired
    by seed), the final training reward accuracy, and the score variance per estimator (and
    its ratio to naive DPO's)."""

    def rows(kind: str, arms: tuple[Arm, ...]) -> list[dict[str, Any]]:
        seeds = [s[kind] for s in per_seed]
        out = [
            {
                "arm": "sft",
                "kind": kind,
                "exact_match": mean_ci([s["before"]["mean"] for s in seeds]),
            }
        ]
        for arm in arms:
            runs = [s["arms"][arm.name] for s in seeds]
            out.append(
                {
                    "arm": arm.name,
                    "kind": kind,
                    **dataclasses.asdict(arm),
                    "exact_match": mean_ci([r["after"]["mean"] for r in runs]),
                    "by_task": {t: mean_ci([r["after"][t] for r in runs]) for t in TASKS},
                    "change": mean_ci(
                        [
                            r["after"]["mean"] - s["before"]["mean"]
                            for r, s in zip(runs, seeds, strict=True)
                        ]
                    ),
                    "train_reward_accuracy": mean_ci([r["reward_accuracy"] for r in runs]),
                }
            )
        out[0]["by_task"] = {t: mean_ci([s["before"][t] for s in seeds]) for t in TASKS}
        return out

    naive = [s["variance"]["naive"]["variance"] for s in per_seed]
    variance = [
        {
            "arm": arm.name,
            **dataclasses.asdict(arm),
            "variance": mean_ci([s["variance"][arm.name]["variance"] for s in per_seed]),
            "ratio_to_naive": mean_ci(
                [
                    s["variance"][arm.name]["variance"] / n
                    for s, n in zip(per_seed, naive, strict=True)
                ]
            ),
            "mean_score": mean_ci([s["variance"][arm.name]["mean_score"] for s in per_seed]),
        }
        for arm in ARMS
    ]
    return {
        "accuracy": rows("diffusion", ARMS) + rows("autoregressive", (AR_ARM,)),
        "variance": variance,
    }


def plot(result: dict[str, Any]):
    def draw(fig):
        summary, settings = result["summary"], result["settings"]
        acc_ax, var_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
        rows = summary["accuracy"]
        for j, r in enumerate(rows):
            color = "tab:orange" if r["kind"] == "autoregressive" else "tab:blue"
            m, ci = r["exact_match"]["mean"], np.nan_to_num(r["exact_match"]["ci95"])
            acc_ax.errorbar([j], [100 * m], yerr=[100 * ci], marker="o", color=color, capsize=4)
        labels = [("AR " if r["kind"] == "autoregressive" else "") + r["arm"] for r in rows]
        acc_ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right")
        acc_ax.set_ylabel("held-out exact match (%)")
        acc_ax.set_title(f"Exact match, {settings['steps']} preference steps")
        var = summary["variance"]
        for j, r in enumerate(var):
            m, ci = r["variance"]["mean"], np.nan_to_num(r["variance"]["ci95"])
            var_ax.errorbar([j], [m], yerr=[[min(ci, 0.9 * m)], [ci]], marker="s", capsize=4)
            values = [s["variance"][r["arm"]]["variance"] for s in result["per_seed"]]
            var_ax.scatter([j] * len(values), values, s=8, color="black", alpha=0.5, zorder=3)
        var_ax.set_yscale("log")
        var_ax.set_xticks(range(len(var)), [r["arm"] for r in var], rotation=30, ha="right")
        var_ax.set_ylabel("Var[score] over noise draws")
        var_ax.set_title(f"Score variance, {settings['draws']} draws (vrpo policy vs SFT)")
        fig.suptitle(
            f"{len(settings['seeds'])} seed(s), mean ± 95 % CI; blue: diffusion (ELBO), "
            "orange: autoregressive (exact log-probs)"
        )

    return draw


def _check_run(flag: str, path: str | None, kinds: tuple[str, ...]) -> None:
    """Refuse a --sft-run / --ar-sft-run that is not a finished `lladax train` run of `kinds`."""
    if path is None:
        return
    p = Path(path).expanduser()
    if not (p / "checkpoints").is_dir():
        raise ValueError(f"{flag} {p} is not a `lladax train` run directory: pass the SFT workdir")
    try:
        kind = vrpo_runs.KindRuns(kinds[0], p, p).model()["kind"]
    except Exception as e:  # an unreadable checkpoint, whatever the reason: one line
        raise ValueError(f"{flag} {p}: no readable checkpoint ({type(e).__name__})") from None
    if kind not in kinds:
        raise ValueError(
            f"{flag} {p} is a model of kind {kind!r}: pass a {' or '.join(kinds)} SFT run"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options, checked: every refusal happens here, before any model is built."""
    ap = experiment_parser("vrpo", __doc__)
    ap.add_argument("--steps", type=int, default=30, help="preference steps of every arm")
    ap.add_argument("--batch-size", type=int, default=8, help="pairs per preference step")
    ap.add_argument("--lr", type=float, default=5e-4, help="peak learning rate")
    ap.add_argument("--beta", type=float, default=0.1, help="DPO's β")
    ap.add_argument(
        "--nll-weight", type=float, default=0.0, help="RPO's SFT term (0: plain DPO, LLaDA 1.5)"
    )
    ap.add_argument("--pairs-per-task", type=int, default=256, help="on-policy training pairs")
    ap.add_argument("--eval-per-task", type=int, default=100, help="held-out prompts per task")
    ap.add_argument("--gen-length", type=int, default=8, help="greedy reply length")
    ap.add_argument("--draws", type=int, default=32, help="noise draws per variance")
    ap.add_argument("--variance-pairs", type=int, default=8, help="held-out pairs")
    ap.add_argument("--sft-run", default=None, help="the diffusion SFT run to start from")
    ap.add_argument("--ar-sft-run", default=None, help="the autoregressive SFT run")
    ap.add_argument("--pretrain-steps", type=int, default=300, help="without --sft-run")
    ap.add_argument("--sft-steps", type=int, default=1500, help="without --sft-run")
    ap.add_argument("--ar-sft-steps", type=int, default=1000, help="without --ar-sft-run")
    ap.add_argument(
        "--workdir", default="runs/experiment_vrpo", help="the runs (finished ones are reused)"
    )
    add_common_options(ap, seeds=[0])
    args = ap.parse_args(argv)
    check_at_least(
        args, steps=1, batch_size=1, eval_per_task=1, gen_length=1, draws=2, variance_pairs=1
    )
    check_at_least(args, pretrain_steps=1, sft_steps=1, ar_sft_steps=1, nll_weight=0)
    for flag, value in (("--lr", args.lr), ("--beta", args.beta)):
        if not value > 0:
            raise ValueError(f"{flag} {value} must be positive: pass e.g. {flag} 0.1")
    if args.pairs_per_task * len(TASKS) < 2 * args.batch_size:
        raise ValueError(
            f"--pairs-per-task {args.pairs_per_task} gives fewer than two batches of "
            f"--batch-size {args.batch_size}: pass --pairs-per-task {args.batch_size} or more"
        )
    if args.variance_pairs > args.eval_per_task * len(TASKS):
        raise ValueError(
            f"--variance-pairs {args.variance_pairs} exceeds the held-out prompts "
            f"({args.eval_per_task} per task): pass fewer"
        )
    work = Path(args.workdir).expanduser()
    if work.exists() and not work.is_dir():
        raise ValueError(f"--workdir {work} is a file: pass a directory")
    _check_run("--sft-run", args.sft_run, ("diffusion", "block_diffusion"))
    _check_run("--ar-sft-run", args.ar_sft_run, ("autoregressive",))
    check_common(args, "vrpo")
    return args


def main(argv: list[str] | None = None, log=print) -> dict[str, Any]:
    args = parse_args(argv)
    runs = vrpo_runs.sft_runs(args, Path(args.workdir).expanduser(), log)
    run = functools.partial(run_seed, runs=runs)
    return run_seeds("vrpo", argv, args, run, summarize, plot, log)
