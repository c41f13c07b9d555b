"""Ranking sanity of the Monte-Carlo ELBO on a trained model: does a real continuation of held-out
text score higher than the same tokens shuffled?

    uv run python benchmarks/elbo_ranking.py --checkpoint runs/small [--pairs 50 --mc 128]
        [--steps 600,1200]   # score these saved steps of the run instead of the newest

Pairs are cut from the held-out split of the run's data (`lladax.data.prepared.token_stream`, split
"eval"): a `--prompt-len` context, then `--answer-len` real tokens vs a random permutation of
those same tokens (so a unigram model cannot tell them apart: only the use of context and order
can). Both members of a pair get the same noise key (common random numbers), so their difference
is estimated with far less variance than either ELBO. Prints the fraction of pairs ranked right.
"""

from __future__ import annotations

import argparse
import time

import harness
import jax
import numpy as np

from lladax.data import prepared
from lladax.data.tokenizer import load_tokenizer
from lladax.diffusion import likelihood
from lladax.eval.experiments.scaling import continuation_pairs
from lladax.store import integrity, params_checkpoint
from lladax.store.loading import load_model


def main() -> None:
    p = harness.parser(__doc__)
    harness.add_options(p, checkpoint=harness.REQUIRED, source="embedded")
    p.add_argument("--pairs", type=int, default=50)
    harness.add_options(p, prompt_len=32)
    p.add_argument("--answer-len", type=int, default=32)
    p.add_argument("--mc", type=int, default=128, help="Monte-Carlo samples per pair")
    harness.add_options(p, seed=0)
    p.add_argument(
        "--steps",
        default=None,
        type=step_list,
        help="comma-separated saved steps of a run dir (default: the newest)",
    )
    args = p.parse_args()

    if args.steps is None:
        score(args, *load_model(args.checkpoint), step=None)
        return
    tok = load_tokenizer(args.checkpoint)
    for step in args.steps:
        try:
            cfg, params = params_checkpoint.load_params(args.checkpoint, step)
        except integrity.CheckpointError as e:
            p.error(str(e))
        score(args, cfg, params, tok, step=step)


def step_list(text: str) -> list[int]:
    """'600,1200' -> [600, 1200]; argparse turns the ValueError into a one-line usage error."""
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of step numbers (e.g. 600,1200)"
        ) from None


def score(args: argparse.Namespace, cfg, params, tok, step: int | None) -> None:
    """Print one JSON line: the fraction of pairs whose real continuation scores higher."""
    stream = prepared.token_stream(tok, source=args.source, split="eval")
    pairs = continuation_pairs(stream, args.pairs, args.prompt_len, args.answer_len, args.seed)
    prompts = [q for q, _, _ in pairs] * 2
    answers = [r for _, r, _ in pairs] + [s for _, _, s in pairs]
    keys = jax.random.split(jax.random.key(args.seed), args.pairs)
    t0 = time.perf_counter()
    scores, stderr = likelihood.log_likelihood_batch(
        params,
        cfg,
        prompts,
        answers,
        mc_num=args.mc,
        rng=jax.numpy.concatenate([keys, keys]),
        return_stderr=True,
    )
    seconds = time.perf_counter() - t0
    real, shuffled = np.asarray(scores[: args.pairs]), np.asarray(scores[args.pairs :])
    right = real > shuffled
    harness.print_record(
        {
            "checkpoint": args.checkpoint,
            "step": step,
            "pairs": args.pairs,
            "mc": args.mc,
            "prompt_len": args.prompt_len,
            "answer_len": args.answer_len,
            "ranked_right": float(right.mean()),
            "mean_gap_nats": float((real - shuffled).mean()),
            "mean_real": float(real.mean()),
            "mean_shuffled": float(shuffled.mean()),
            "median_stderr": float(np.median(stderr)),
            "seconds": round(seconds, 1),
        }
    )


if __name__ == "__main__":
    main()
