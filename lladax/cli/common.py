"""Shared CLI glue: the model and sampling flags of `sample` / `chat` (the model itself is loaded by
`lladax.store.loading`).

Every sampling flag is checked here before anything slow starts (`check_sampling_args`: no JAX,
no weights read), each error naming the flag and the fix.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

TOKENIZER_HELP = (
    "the model's tokenizer: a tokenizer.json / tokenizer.model file or a directory "
    "holding one (default: the one in --checkpoint)"
)


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a `lladax train` workdir or a Hugging Face LLaDA directory",
    )
    p.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16"],
        help="compute/param dtype (default: as saved; HF dirs load as float32)",
    )
    p.add_argument("--tokenizer", default=None, metavar="PATH", help=TOKENIZER_HELP)


def add_sampling_args(p: argparse.ArgumentParser, *, gen_length: int = 64) -> None:
    g = p.add_argument_group("sampling (reference generate.py semantics)")
    g.add_argument("--gen-length", type=int, default=gen_length)
    g.add_argument("--steps", type=int, default=None, help="default: gen-length")
    g.add_argument(
        "--block-length",
        type=int,
        default=None,
        help="semi-autoregressive block size (default: gen-length = pure diffusion)",
    )
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--cfg-scale", type=float, default=0.0, help="classifier-free guidance")
    g.add_argument("--remasking", default="low_confidence", choices=["low_confidence", "random"])
    g.add_argument("--logits-eos-inf", action="store_true", help="never generate EOS")
    g.add_argument(
        "--confidence-eos-eot-inf", action="store_true", help="commit EOS/EOT last (reference flag)"
    )
    g.add_argument(
        "--early-exit",
        action="store_true",
        help="skip blocks once a row has finished with EOS (same tokens)",
    )
    g.add_argument("--seed", type=int, default=0)


def _check_number(flag: str, value: float, *, low: float, strict: bool, fix: str) -> None:
    ok = math.isfinite(value) and (value > low if strict else value >= low)
    if not ok:
        raise ValueError(
            f"{flag} {value} must be a finite number {'>' if strict else '>='} {low:g} ({fix})"
        )


def _examples(values: list[int]) -> str:
    return ", ".join(str(v) for v in values[:4]) + (" ..." if len(values) > 4 else "")


def check_sampling_args(args: argparse.Namespace) -> None:
    """Every sampling flag of `add_sampling_args` (and `add_fast_args` when present), checked
    before the model loads, with the sampler's own rules (denoise.check_options,
    fast_sampling._check_fast): each error names the flag and the fix."""
    if args.gen_length < 1:
        raise ValueError(f"--gen-length {args.gen_length} must be >= 1 (tokens to generate)")
    if args.steps is not None and args.steps < 1:
        raise ValueError(
            f"--steps {args.steps} must be >= 1 (omit it for one token per step: "
            "--steps = --gen-length)"
        )
    if args.block_length is not None and args.block_length < 1:
        raise ValueError(
            f"--block-length {args.block_length} must be >= 1 (omit it for one "
            "block: --block-length = --gen-length)"
        )
    gen, block = args.gen_length, args.block_length or args.gen_length
    if gen % block:
        divisors = [d for d in range(1, gen + 1) if gen % d == 0]
        raise ValueError(
            f"--block-length {block} does not divide --gen-length {gen}: pass a "
            f"divisor of {gen} ({_examples(divisors)})"
        )
    steps, n_blocks = args.steps if args.steps is not None else gen, gen // block
    if steps % n_blocks:
        raise ValueError(
            f"--steps {steps} is not a multiple of the number of blocks {n_blocks} "
            f"(--gen-length {gen} / --block-length {block}): pass a multiple of "
            f"{n_blocks}, e.g. {n_blocks * max(1, steps // n_blocks)}"
        )
    _check_number("--temperature", args.temperature, low=0, strict=False, fix="0 = greedy")
    _check_number("--cfg-scale", args.cfg_scale, low=0, strict=False, fix="0 = no guidance")
    if not 0 <= args.seed < 2**63:
        raise ValueError(f"--seed {args.seed} must be an integer in [0, 2**63)")
    if getattr(args, "threshold", None) is not None:
        _check_number(
            "--threshold",
            args.threshold,
            low=0,
            strict=False,
            fix="e.g. 0.9; above 1 commits no extra tokens",
        )
    if getattr(args, "factor", None) is not None:
        _check_number("--factor", args.factor, low=0, strict=True, fix="e.g. 1.0")
        if args.threshold is not None:
            raise ValueError(
                "--threshold and --factor are two rules for the same choice: pass one of them"
            )


def sampling_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The sampler's keyword arguments from flags already checked by `check_sampling_args`
    (None means the default: --steps and --block-length = --gen-length)."""
    import jax

    return dict(
        steps=args.steps if args.steps is not None else args.gen_length,
        gen_length=args.gen_length,
        block_length=args.block_length if args.block_length is not None else args.gen_length,
        temperature=args.temperature,
        cfg_scale=args.cfg_scale,
        remasking=args.remasking,
        logits_eos_inf=args.logits_eos_inf,
        confidence_eos_eot_inf=args.confidence_eos_eot_inf,
        rng=jax.random.key(args.seed),
    )


def generate(
    params: Any, cfg: Any, tokens: Any, attention_mask: Any, kwargs: dict[str, Any], **extra: Any
) -> Any:
    """Decode with the sampler of the model's kind: the diffusion sampler (`sampling_kwargs` and
    `extra`), or left to right for an autoregressive baseline (gen_length, temperature, rng)."""
    if cfg.causal:
        from lladax.diffusion import autoregressive

        if extra.get("return_history"):
            raise ValueError(
                "--show-steps shows the diffusion sampler's canvas; this model is "
                "autoregressive (kind='autoregressive'): drop --show-steps"
            )
        return autoregressive.generate(
            params,
            cfg,
            tokens,
            attention_mask,
            gen_length=kwargs["gen_length"],
            temperature=kwargs["temperature"],
            rng=kwargs["rng"],
        )
    from lladax.diffusion import sampling

    return sampling.generate(params, cfg, tokens, attention_mask, **kwargs, **extra)


def add_fast_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "fast decoding (lladax.diffusion.fast_sampling; docs/fast_decoding.md)"
    )
    g.add_argument(
        "--fast",
        action="store_true",
        help="Fast-dLLM decoding: dual KV cache + confidence threshold 0.9 unless "
        "--cache / --threshold / --factor say otherwise (each implies --fast)",
    )
    g.add_argument(
        "--cache",
        choices=["none", "prefix", "dual"],
        default=None,
        help="KV cache refreshed at each block start (default with --fast: dual)",
    )
    g.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="also commit every block mask with confidence >= this (default with "
        "--fast: 0.9; > 1 turns parallel commits off)",
    )
    g.add_argument(
        "--factor",
        type=float,
        default=None,
        help="Fast-dLLM factor rule instead of a fixed threshold (e.g. 1.0)",
    )


def fast_kwargs(args: argparse.Namespace) -> dict[str, Any] | None:
    """`fast_sampling.generate` options, or None when no fast-decoding flag was given."""
    if not (args.fast or args.cache or args.threshold is not None or args.factor is not None):
        return None
    threshold = args.threshold
    if threshold is None and args.factor is None:
        threshold = 0.9
    return dict(cache=args.cache or "dual", threshold=threshold, factor=args.factor)
