"""Diffusion vs autoregressive at several sizes on the default data, equal tokens.

Each size is trained twice by `lladax.train.loop.run` from `configs/small.py` (the same data,
batches,
optimizer, schedule and steps) with only `model.kind` changed, then scored on the held-out split:

  held-out loss   autoregressive: the exact NLL per token; diffusion: the ELBO bound per token
                  (`trainer.eval_loss`, averaged over `--noise-draws` noise draws), which
                  is an UPPER bound on the diffusion model's NLL — the comparison favours AR
  continuation    a downstream check: `--pairs` held-out (context, real continuation) vs
  ranking         (context, same tokens shuffled); the score is exact log p for AR and the
                  Monte-Carlo ELBO (`likelihood.log_likelihood_batch`) for diffusion; accuracy
                  = fraction ranked right

With several --seeds every (size, kind) is trained once per seed (initialisation and data order
change); the summary is the mean ± 95 % CI over seeds.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lladax.data import pipeline, prepared
from lladax.data.tokenizer import load_tokenizer
from lladax.diffusion import autoregressive, likelihood
from lladax.eval.experiments.common import (
    Stopped,
    add_common_options,
    check_at_least,
    check_common,
    experiment_parser,
    finish,
    mean_ci,
)
from lladax.store import params_checkpoint
from lladax.train import loop, trainer
from lladax.train.config_files import load_config_file

ROOT = Path(__file__).resolve().parents[3]
SIZES = {  # name: (d_model, n_layers, n_heads); "m" is configs/small.py's model
    "xs": (64, 2, 2),
    "s": (128, 3, 4),
    "m": (256, 4, 4),
}


def continuation_pairs(
    stream: np.ndarray, n: int, prompt_len: int, answer_len: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """n (context, real, shuffled) triples from evenly spaced windows of a token stream; the
    shuffled answer is a permutation of the real one (a unigram model cannot tell them apart)."""
    span = prompt_len + answer_len
    if len(stream) < n * span:
        raise ValueError(
            f"held-out stream has {len(stream)} tokens, need {n * span}: use fewer "
            "pairs or shorter lengths"
        )
    rng = np.random.default_rng(seed)
    out = []
    for s in np.linspace(0, len(stream) - span, n).astype(int):
        prompt, real = stream[s : s + prompt_len], stream[s + prompt_len : s + span]
        shuffled = real.copy()
        while np.array_equal(shuffled, real) and len(set(real.tolist())) > 1:
            shuffled = rng.permutation(real)
        out.append((prompt, real, shuffled))
    return out


def heldout_loss(
    params: Any, cfg: Any, batches: list[dict[str, np.ndarray]], noise_draws: int
) -> float:
    """Nats per token on the held-out batches (`trainer.eval_loss` with fixed keys): exact NLL
    (AR), else the ELBO bound averaged over `noise_draws` draws (diffusion: the pretraining
    bound; block diffusion: the sum of the per-block bounds)."""
    draws = 1 if cfg.causal else noise_draws  # the AR loss has no noise
    return float(
        np.mean(
            [
                trainer.eval_loss(
                    params, cfg, jnp.asarray(b["tokens"]), jax.random.key(1000 * i + k)
                )
                for i, b in enumerate(batches)
                for k in range(draws)
            ]
        )
    )


def ranking_accuracy(params: Any, cfg: Any, pairs: list, mc_num: int, seed: int) -> float:
    """Fraction of pairs whose real continuation scores above the shuffled one."""
    prompts, reals, shuffled = (np.stack(x) for x in zip(*pairs, strict=True))
    if cfg.causal:

        def score(answers):
            tokens = np.concatenate([prompts, answers], 1)
            return np.asarray(
                autoregressive.sequence_log_prob(
                    params,
                    cfg,
                    jnp.asarray(tokens),
                    jnp.ones(tokens.shape, jnp.int32),
                    jnp.full((len(tokens),), prompts.shape[1]),
                )
            )

        return float(np.mean(score(reals) > score(shuffled)))
    keys = jax.random.split(jax.random.key(seed), len(pairs))  # common random numbers per pair
    scores = np.asarray(
        likelihood.log_likelihood_batch(
            params,
            cfg,
            list(prompts) * 2,
            list(reals) + list(shuffled),
            mc_num=mc_num,
            batch_size=min(16, mc_num),
            rng=jnp.concatenate([keys, keys]),
        )
    )
    return float(np.mean(scores[: len(pairs)] > scores[len(pairs) :]))


def base_config() -> Any:
    """configs/small.py, the run every size is derived from."""
    return load_config_file(str(ROOT / "configs" / "small.py"))


def heldout_stream(config: Any) -> np.ndarray:
    """The held-out split as one token stream (the continuation pairs are cut from it)."""
    tok = load_tokenizer("embedded", vocab_size=config.model.vocab_size)
    return prepared.token_stream(tok, source=config.data.source, split="eval")


def size_config(size: str, seed: int, steps: int, workdir: Path, args: Any, **model: Any) -> Any:
    """configs/small.py with the model of `size` (and `model` overrides, e.g. kind), `steps`
    steps, data order and initialisation from `seed`, one eval at the end, run dir `workdir`."""
    d, layers, heads = SIZES[size]
    config = base_config()
    config.model.update(
        d_model=d, n_layers=layers, n_heads=heads, n_kv_heads=heads, mlp_hidden_size=3 * d, **model
    )
    config.train.update(steps=steps, seed=seed)
    config.eval.update(every=steps, batches=args.eval_batches)
    config.log.update(workdir=str(workdir), progress=False, every=max(1, steps // 10))
    config.data.seed = seed
    return config


def train_and_score(
    config: Any, args: argparse.Namespace, stream: np.ndarray, seed: int, where: str
) -> dict[str, Any]:
    """Train `config` with `loop.run` (a signal stops the experiment: Stopped names `where`),
    then score the run: params, training tokens, final train loss, held-out loss and ranking."""
    out = loop.run(config)
    if out.get("stopped") not in (None, "stop_after"):  # the user's Ctrl-C / SIGTERM
        raise Stopped(out["stopped"], where)
    cfg, params = params_checkpoint.load_params(config.log.workdir)
    tok = load_tokenizer("embedded", vocab_size=cfg.vocab_size)
    evals = pipeline.eval_batches(
        tok,
        source=config.data.source,
        seq_len=config.data.seq_len,
        batch_size=config.eval.batch_size,
        max_batches=args.eval_batches,
    )
    pairs = continuation_pairs(stream, args.pairs, 32, 32, seed)
    return {
        "params": cfg.param_count(),
        "tokens": config.train.steps * config.train.batch_size * config.data.seq_len,
        "train_loss": out["loss"],
        "heldout_loss": heldout_loss(params, cfg, evals, args.noise_draws),
        "ranking": ranking_accuracy(params, cfg, pairs, args.mc, seed),
    }


def run_one(
    size: str,
    kind: str,
    seed: int,
    args: argparse.Namespace,
    workdir: Path,
    stream: np.ndarray,
    log=print,
) -> dict[str, Any]:
    config = size_config(
        size, seed, args.steps, workdir / f"seed{seed}" / f"{size}_{kind}", args, kind=kind
    )
    where = f"the {size} {kind} run of seed {seed}"
    result = {
        "size": size,
        "kind": kind,
        "seed": seed,
        **train_and_score(config, args, stream, seed, where),
    }
    log(
        f"  {size:>2} {kind:>14} seed {seed}: {result['params'] / 1e6:.2f}M params, held-out "
        f"{result['heldout_loss']:.3f} nats/token, ranking {result['ranking']:.0%}"
    )
    return result


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (size, kind) in run order: params, tokens and mean ± 95 % CI over seeds of
    train_loss, heldout_loss and ranking."""
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in runs:
        rows.setdefault((r["size"], r["kind"]), []).append(r)
    return [
        {
            "size": size,
            "kind": kind,
            "params": group[0]["params"],
            "tokens": group[0]["tokens"],
            "seeds": [r["seed"] for r in group],
            **{
                k: mean_ci([r[k] for r in group]) for k in ("train_loss", "heldout_loss", "ranking")
            },
        }
        for (size, kind), group in rows.items()
    ]


def plot(result: dict[str, Any]):
    def draw(fig):
        loss_ax, rank_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
        for kind, marker in (("diffusion", "o"), ("autoregressive", "s")):
            rows = [r for r in result["summary"] if r["kind"] == kind]
            n = [r["params"] for r in rows]
            label = kind + (" (ELBO bound)" if kind == "diffusion" else " (exact NLL)")
            for ax, key, scale, name in (
                (loss_ax, "heldout_loss", 1, label),
                (rank_ax, "ranking", 100, kind),
            ):
                ax.errorbar(
                    n,
                    [scale * r[key]["mean"] for r in rows],
                    yerr=[scale * np.nan_to_num(r[key]["ci95"]) for r in rows],
                    marker=marker,
                    capsize=4,
                    label=name,
                )
                runs = [r for r in result["runs"] if r["kind"] == kind]
                ax.scatter(
                    [r["params"] for r in runs],
                    [scale * r[key] for r in runs],
                    s=8,
                    color="black",
                    alpha=0.5,
                    zorder=3,
                )
        for ax in (loss_ax, rank_ax):
            ax.set_xscale("log")
            ax.set_xlabel("parameters")
            ax.legend()
        loss_ax.set_ylabel("held-out nats / token")
        rank_ax.set_ylabel("real > shuffled continuation (%)")
        rank_ax.axhline(50, color="grey", lw=0.8, ls=":")
        tokens, seeds = result["runs"][0]["tokens"], len(result["settings"]["seeds"])
        loss_ax.set_title(f"Equal data: {tokens / 1e3:.0f}k tokens each, {seeds} seed(s), 95 % CI")
        rank_ax.set_title(f"Continuation ranking, {result['settings']['pairs']} pairs")

    return draw


def add_scoring_options(ap: argparse.ArgumentParser) -> None:
    """--eval-batches, --noise-draws, --pairs, --mc and --workdir: how the runs are scored and
    where they are kept (checked by `check_scoring_options`)."""
    ap.add_argument("--eval-batches", type=int, default=8)
    ap.add_argument("--noise-draws", type=int, default=8, help="diffusion ELBO noise draws")
    ap.add_argument("--pairs", type=int, default=50)
    ap.add_argument(
        "--mc",
        type=int,
        default=64,
        help="Monte-Carlo samples per ELBO (at most 16, or a multiple of 16)",
    )
    ap.add_argument(
        "--workdir",
        default=None,
        help="keep the runs here (a new or empty directory; default: a temp dir)",
    )


def check_scoring_options(args: argparse.Namespace) -> None:
    """Refuse what `add_scoring_options` added when it is out of range, before any work."""
    check_at_least(args, eval_batches=1, noise_draws=1, pairs=1, mc=1)
    if args.mc > 16 and args.mc % 16:  # the ELBO runs min(16, mc) samples per forward
        raise ValueError(
            f"--mc {args.mc} must be at most 16 or a multiple of 16: pass e.g. "
            f"{args.mc // 16 * 16 or 16}"
        )
    if args.workdir is not None:
        work = Path(args.workdir).expanduser()
        if work.exists() and (not work.is_dir() or any(work.iterdir())):
            raise ValueError(
                f"--workdir {work} is not a new or empty directory: pass one (the "
                "runs would resume from or mix with what is there)"
            )


def scoring_stream(args: argparse.Namespace) -> np.ndarray:
    """The held-out stream, refused before any training when it is too short for --pairs (the
    pairs are cut after training)."""
    stream = heldout_stream(base_config())
    if len(stream) < args.pairs * 64:
        raise ValueError(
            f"--pairs {args.pairs} needs {args.pairs * 64} held-out tokens, the "
            f"held-out split has {len(stream)}: pass --pairs "
            f"{len(stream) // 64} or fewer"
        )
    return stream


@contextlib.contextmanager
def runs_dir(args: argparse.Namespace) -> Iterator[Path]:
    """Where the runs go: --workdir (kept), or a temporary directory removed afterwards."""
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(args.workdir).expanduser() if args.workdir else Path(tmp)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options, checked: every refusal happens here, before any model is built."""
    ap = experiment_parser("scaling", __doc__)
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--steps", type=int, default=300, help="configs/small.py's default")
    add_scoring_options(ap)
    add_common_options(ap, seeds=[0])
    args = ap.parse_args(argv)
    repeated = sorted({s for s in args.sizes if args.sizes.count(s) > 1})
    if repeated:
        raise ValueError(f"--sizes repeats {' '.join(repeated)}: pass each size once")
    check_at_least(args, steps=1)
    check_scoring_options(args)
    check_common(args, "scaling")
    return args


def main(argv: list[str] | None = None, log=print) -> dict[str, Any]:
    args = parse_args(argv)
    stream = scoring_stream(args)
    runs = []
    with runs_dir(args) as workdir:
        for seed in args.seeds:
            for size in args.sizes:
                for kind in ("diffusion", "autoregressive"):
                    runs.append(run_one(size, kind, seed, args, workdir, stream, log))
    return finish("scaling", argv, args, {"runs": runs, "summary": summarize(runs)}, plot)
