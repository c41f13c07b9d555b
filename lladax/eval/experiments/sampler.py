"""Sampler ablations (the paper's Table/Figure on steps, block length and remasking), on a task
where the answer's tokens depend on each other.

Data: arithmetic progressions over a private vocabulary of M entity tokens,

  <bos> a  a+d  a+2d ... a+(L-1)d  <eos>      (mod M, d drawn from 1..D per document)

The question gives only `a`; the model must write L - 1 tokens that form ONE progression. Every
single position is ambiguous (D possible values) but the positions are tied together by the
unknown d, which is exactly what parallel decoding struggles with: committing many tokens in one
step picks each from its own marginal and mixes different d's. A reply is VALID when it is a
progression from `a` with one step d in 1..D followed by <eos>. Measured on a diffusion model
trained here (and the autoregressive baseline as a reference, one token per forward pass):

  steps      1, 2, 4 … L forward passes for the L answer tokens (one block): quality vs speed
  remasking  low_confidence vs random, at every step count
  blocks     semi-autoregressive block length at steps = gen_length
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import jax
import numpy as np

from lladax.config import ModelConfig, preset
from lladax.diffusion import autoregressive, sampling
from lladax.diffusion.sampler_config import SamplerConfig
from lladax.eval.experiments import common
from lladax.train.run_config import TrainConfig

BOS, EOS = 1, 2
FIRST_ENTITY = 16


def progressions(
    n: int, length: int, modulus: int, max_step: int, rng: np.random.Generator
) -> np.ndarray:
    """[n, length + 2] rows <bos> a, a+d, ... <eos> (entity ids offset by FIRST_ENTITY)."""
    a = rng.integers(0, modulus, n)[:, None]
    d = rng.integers(1, max_step + 1, n)[:, None]
    body = FIRST_ENTITY + (a + d * np.arange(length)[None, :]) % modulus
    return np.concatenate([np.full((n, 1), BOS), body, np.full((n, 1), EOS)], 1).astype(np.int32)


def valid(replies: np.ndarray, starts: np.ndarray, modulus: int, max_step: int) -> np.ndarray:
    """[n] bool: reply [n, L] = the L - 1 progression tokens after `starts` [n], then <eos>."""
    body, end = replies[:, :-1] - FIRST_ENTITY, replies[:, -1]
    seq = np.concatenate([starts[:, None] - FIRST_ENTITY, body], 1)
    steps = (seq[:, 1:] - seq[:, :-1]) % modulus
    in_range = np.all(
        (replies[:, :-1] >= FIRST_ENTITY) & (replies[:, :-1] < FIRST_ENTITY + modulus), axis=1
    )
    one_step = (
        np.all(steps == steps[:, :1], axis=1) & (steps[:, 0] >= 1) & (steps[:, 0] <= max_step)
    )
    return in_range & one_step & (end == EOS)


def model_config(kind: str, modulus: int, length: int) -> ModelConfig:
    return preset(
        "tiny",
        vocab_size=FIRST_ENTITY + modulus,
        d_model=64,
        n_layers=3,
        n_heads=4,
        n_kv_heads=4,
        mlp_hidden_size=256,
        max_seq_len=length + 2,
        remat_policy="none",
        kind=kind,
    )


def validity(
    params: Any,
    cfg: ModelConfig,
    prompts: np.ndarray,
    args: argparse.Namespace,
    sampler: SamplerConfig | None = None,
    rng: jax.Array | None = None,
) -> float:
    """Fraction of valid replies of args.length tokens (L - 1 progression tokens + <eos>): the
    diffusion model with `sampler` (its gen_length is args.length), or left to right."""
    if cfg.causal:
        canvas = autoregressive.generate(params, cfg, prompts, gen_length=args.length)
    else:
        canvas = sampling.generate_with(params, cfg, prompts, None, sampler, rng)
    replies = np.asarray(jax.device_get(canvas))[:, prompts.shape[1] :]
    return float(np.mean(valid(replies, prompts[:, 1], args.modulus, args.max_step)))


def run_seed(seed: int, args: argparse.Namespace, log=print) -> dict[str, Any]:
    """Train both models with `seed` and score every sampler setting on the seed's questions."""
    rng = np.random.default_rng(seed)
    # One TrainConfig for every seed (the seed goes to init and data through train_rows), so
    # the jitted step compiles once per model kind.
    tc = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=1e-3,
        warmup_steps=min(50, args.steps // 10),
        decay_fraction=0.3,
        truncate_prob=0.0,
        stratified_t=True,
    )
    # L - 1 progression tokens + <eos> are generated after <bos> a: rows hold L + 1 + <bos>.
    sample = lambda r: progressions(args.batch_size, args.length, args.modulus, args.max_step, r)
    prompts = progressions(args.queries, args.length, args.modulus, args.max_step, rng)[:, :2]
    trained = {}
    for kind in ("diffusion", "autoregressive"):
        cfg = model_config(kind, args.modulus, args.length)
        trained[kind] = (cfg, common.train_rows(cfg, tc, sample, seed=seed, log=log)[0])
    cfg, params = trained["diffusion"]
    out: dict[str, Any] = {"seed": seed, "steps": {}, "blocks": []}
    one_block = SamplerConfig(gen_length=args.length)  # greedy; steps, block_length: the sweeps
    for remasking in SamplerConfig.REMASKING:
        out["steps"][remasking] = [
            {
                "steps": s,
                "valid": validity(
                    params,
                    cfg,
                    prompts,
                    args,
                    dataclasses.replace(one_block, steps=s, remasking=remasking),
                    jax.random.key(seed),
                ),
            }
            for s in step_counts(args.length)
        ]
        log(
            f"  {remasking:>14}: "
            + ", ".join(f"{r['steps']} steps {r['valid']:.0%}" for r in out["steps"][remasking])
        )
    for block in step_counts(args.length):
        out["blocks"].append(
            {
                "block_length": block,
                "valid": validity(
                    params, cfg, prompts, args, dataclasses.replace(one_block, block_length=block)
                ),
            }
        )
    log("  blocks: " + ", ".join(f"{r['block_length']}: {r['valid']:.0%}" for r in out["blocks"]))
    ar_cfg, ar_params = trained["autoregressive"]
    out["autoregressive_valid"] = validity(ar_params, ar_cfg, prompts, args)
    log(f"  autoregressive: {out['autoregressive_valid']:.0%}")
    return out


def step_counts(length: int) -> list[int]:
    """1, 2, 4, ..., length: the step counts and block lengths swept (length a power of two)."""
    return [2**i for i in range(length.bit_length())]


def summarize(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± 95 % CI over seeds of every number in `run_seed`'s result (same layout)."""
    first = per_seed[0]
    return {
        "steps": {
            remasking: [
                {
                    "steps": row["steps"],
                    "valid": common.mean_ci([s["steps"][remasking][i]["valid"] for s in per_seed]),
                }
                for i, row in enumerate(rows)
            ]
            for remasking, rows in first["steps"].items()
        },
        "blocks": [
            {
                "block_length": row["block_length"],
                "valid": common.mean_ci([s["blocks"][i]["valid"] for s in per_seed]),
            }
            for i, row in enumerate(first["blocks"])
        ],
        "autoregressive_valid": common.mean_ci([s["autoregressive_valid"] for s in per_seed]),
    }


def _errorbar(
    ax, xs: list[int], stats: list[dict[str, float]], per_seed: list[list[float]], **style: Any
) -> None:
    """Means with 95 % CI bars, one dot per seed."""
    ax.errorbar(
        xs,
        [100 * s["mean"] for s in stats],
        yerr=[100 * np.nan_to_num(s["ci95"]) for s in stats],
        capsize=4,
        **style,
    )
    for values in per_seed:
        ax.scatter(xs, [100 * v for v in values], s=8, color="black", alpha=0.5, zorder=3)


def plot(result: dict[str, Any]):
    def draw(fig):
        steps_ax, block_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
        summary, seeds = result["summary"], result["per_seed"]
        for remasking, rows in summary["steps"].items():
            _errorbar(
                steps_ax,
                [r["steps"] for r in rows],
                [r["valid"] for r in rows],
                [[r["valid"] for r in s["steps"][remasking]] for s in seeds],
                marker="o",
                label=f"diffusion, {remasking}",
            )
        ar, gen = summary["autoregressive_valid"], result["settings"]["length"]
        steps_ax.errorbar(
            [gen],
            [100 * ar["mean"]],
            yerr=[100 * np.nan_to_num(ar["ci95"])],
            marker="s",
            color="black",
            capsize=4,
            zorder=3,
            label=f"autoregressive ({gen} passes)",
        )
        steps_ax.set_xscale("log", base=2)
        steps_ax.set_xlabel(f"sampling steps (forward passes) for {gen} tokens")
        steps_ax.set_ylabel("valid progressions (%)")
        steps_ax.set_ylim(0, 105)
        steps_ax.legend()
        steps_ax.set_title(f"Steps and remasking (one block), {len(seeds)} seed(s), 95 % CI")
        rows = summary["blocks"]
        _errorbar(
            block_ax,
            [r["block_length"] for r in rows],
            [r["valid"] for r in rows],
            [[r["valid"] for r in s["blocks"]] for s in seeds],
            marker="o",
        )
        block_ax.set_xscale("log", base=2)
        block_ax.set_xlabel(f"block length (steps = {gen}, low_confidence)")
        block_ax.set_ylim(0, 105)
        block_ax.set_title("Semi-autoregressive blocks")

    return draw


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options, checked: every refusal happens here, before any model is built."""
    ap = common.experiment_parser("sampler", __doc__)
    ap.add_argument("--length", type=int, default=16, help="tokens after <bos> a (incl. <eos>)")
    ap.add_argument("--modulus", type=int, default=64)
    ap.add_argument("--max-step", type=int, default=8)
    ap.add_argument("--steps", type=int, default=2000, help="training steps")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--queries", type=int, default=256)
    common.add_common_options(ap, seeds=[0, 1, 2])
    args = ap.parse_args(argv)
    common.check_at_least(args, length=2, modulus=2, max_step=1, steps=1, batch_size=1, queries=1)
    if args.length & (args.length - 1):
        raise ValueError(
            f"--length {args.length} must be a power of two (the step and block "
            "sweeps divide it): pass e.g. 8 or 16"
        )
    if args.max_step >= args.modulus:
        raise ValueError(
            f"--max-step {args.max_step} must be below --modulus {args.modulus} "
            "(a step of M or more wraps onto a smaller one): lower --max-step"
        )
    common.check_common(args, "sampler")
    return args


def main(argv: list[str] | None = None, log=print) -> dict[str, Any]:
    return common.run_seeds("sampler", argv, parse_args(argv), run_seed, summarize, plot, log)
