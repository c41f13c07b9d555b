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
from typing import Any

import jax
import numpy as np

from lladax import autoregressive, sampling
from lladax.config import ModelConfig, TrainConfig, preset
from lladax.experiments.common import provenance, train_rows, write_result

BOS, EOS = 1, 2
FIRST_ENTITY = 16


def progressions(n: int, length: int, modulus: int, max_step: int, rng: np.random.Generator
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
    in_range = np.all((replies[:, :-1] >= FIRST_ENTITY)
                      & (replies[:, :-1] < FIRST_ENTITY + modulus), axis=1)
    one_step = np.all(steps == steps[:, :1], axis=1) & (steps[:, 0] >= 1) & \
        (steps[:, 0] <= max_step)
    return in_range & one_step & (end == EOS)


def model_config(kind: str, modulus: int, length: int) -> ModelConfig:
    return preset("tiny", vocab_size=FIRST_ENTITY + modulus, d_model=64, n_layers=3, n_heads=4,
                  n_kv_heads=4, mlp_hidden_size=256, max_seq_len=length + 2, remat_policy="none",
                  kind=kind)


def validity(params: Any, cfg: ModelConfig, prompts: np.ndarray, args: argparse.Namespace,
             **sampler: Any) -> float:
    gen = args.length  # L - 1 progression tokens + <eos>
    if cfg.causal:
        canvas = autoregressive.generate(params, cfg, prompts, gen_length=gen)
    else:
        canvas = sampling.generate(params, cfg, prompts, gen_length=gen, **sampler)
    replies = np.asarray(jax.device_get(canvas))[:, prompts.shape[1]:]
    return float(np.mean(valid(replies, prompts[:, 1], args.modulus, args.max_step)))


def plot(result: dict[str, Any]):
    def draw(fig):
        steps_ax, block_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
        for remasking, rows in result["steps"].items():
            steps_ax.plot([r["steps"] for r in rows], [100 * r["valid"] for r in rows],
                          marker="o", label=f"diffusion, {remasking}")
        ar = 100 * result["autoregressive_valid"]
        gen = result["settings"]["length"]
        steps_ax.scatter([gen], [ar], marker="s", color="black", zorder=3,
                         label=f"autoregressive ({gen} passes)")
        steps_ax.set_xscale("log", base=2)
        steps_ax.set_xlabel(f"sampling steps (forward passes) for {gen} tokens")
        steps_ax.set_ylabel("valid progressions (%)")
        steps_ax.set_ylim(0, 105)
        steps_ax.legend()
        steps_ax.set_title("Steps and remasking (one block)")
        rows = result["blocks"]
        block_ax.plot([r["block_length"] for r in rows], [100 * r["valid"] for r in rows],
                      marker="o")
        block_ax.set_xscale("log", base=2)
        block_ax.set_xlabel(f"block length (steps = {gen}, low_confidence)")
        block_ax.set_ylim(0, 105)
        block_ax.set_title("Semi-autoregressive blocks")
    return draw


def main(argv: list[str] | None = None, log=print) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="lladax experiment sampler", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--length", type=int, default=16, help="tokens after <bos> a (incl. <eos>)")
    ap.add_argument("--modulus", type=int, default=64)
    ap.add_argument("--max-step", type=int, default=8)
    ap.add_argument("--steps", type=int, default=2000, help="training steps")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--queries", type=int, default=256)
    ap.add_argument("--out", default="docs/experiments")
    args = ap.parse_args(argv)
    if args.length & (args.length - 1):
        raise ValueError(f"--length {args.length} must be a power of two (the step and block "
                         "sweeps divide it)")
    rng = np.random.default_rng(args.seed)
    tc = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=1e-3,
                     warmup_steps=min(50, args.steps // 10), decay_fraction=0.3,
                     truncate_prob=0.0, stratified_t=True)
    # L - 1 progression tokens + <eos> are generated after <bos> a: rows hold L + 1 + <bos>.
    sample = lambda r: progressions(args.batch_size, args.length, args.modulus,
                                    args.max_step, r)
    prompts = progressions(args.queries, args.length, args.modulus, args.max_step, rng)[:, :2]
    trained = {}
    for kind in ("diffusion", "autoregressive"):
        cfg = model_config(kind, args.modulus, args.length)
        trained[kind] = (cfg, train_rows(cfg, tc, sample, seed=args.seed, log=log)[0])
    cfg, params = trained["diffusion"]
    counts = [2 ** i for i in range(args.length.bit_length())]  # 1, 2, 4, ..., L
    result: dict[str, Any] = {"experiment": "sampler", "settings": vars(args),
                              "provenance": provenance("lladax experiment sampler "
                                                       + " ".join(argv or []), [args.seed]),
                              "steps": {}, "blocks": []}
    for remasking in ("low_confidence", "random"):
        result["steps"][remasking] = [
            {"steps": s, "valid": validity(params, cfg, prompts, args, steps=s,
                                           block_length=args.length, remasking=remasking,
                                           rng=jax.random.key(args.seed))} for s in counts]
        log(f"  {remasking:>14}: " + ", ".join(f"{r['steps']} steps {r['valid']:.0%}"
                                                for r in result["steps"][remasking]))
    for block in counts:
        result["blocks"].append({"block_length": block, "valid": validity(
            params, cfg, prompts, args, steps=args.length, block_length=block)})
    log("  blocks: " + ", ".join(f"{r['block_length']}: {r['valid']:.0%}"
                                 for r in result["blocks"]))
    ar_cfg, ar_params = trained["autoregressive"]
    result["autoregressive_valid"] = validity(ar_params, ar_cfg, prompts, args)
    log(f"  autoregressive: {result['autoregressive_valid']:.0%}")
    write_result(args.out, "sampler", result, plot(result))
    return result
