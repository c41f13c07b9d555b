"""Shared CLI glue: load a model + tokenizer from a `lladax train` run or a HF directory, and the
sampling flags of `sample` / `chat`.

Every flag and path is checked here before anything slow starts (`check_sampling_args`,
`check_model_path`: no JAX, no weights read), each error naming the flag and the fix.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")  # looked up in this order
TOKENIZER_HELP = ("the model's tokenizer: a tokenizer.json / tokenizer.model file or a directory "
                  "holding one (default: the one in --checkpoint)")


def _tokenizer_in(directory: Path) -> Path | None:
    return next((directory / n for n in TOKENIZER_FILES if (directory / n).is_file()), None)


def check_model_path(path: str, tokenizer: str | None = None, *, flag: str = "--tokenizer"
                     ) -> tuple[Path, bool, Path]:
    """Check --checkpoint / --tokenizer without loading anything (no JAX): returns
    (checkpoint dir, is_hf, tokenizer file). `flag` is how the caller's user sets the tokenizer
    (named in the error when the checkpoint has none)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {p} does not exist: pass a `lladax train` workdir "
                                "or a Hugging Face LLaDA directory")
    if not p.is_dir():
        raise ValueError(f"checkpoint {p} is a file, not a directory: pass the `lladax train` "
                         "workdir or the Hugging Face directory (the one holding config.json)")
    is_hf, is_run = (p / "config.json").is_file(), (p / "checkpoints").is_dir()
    if is_hf and is_run:
        # Loading either would be a guess: the other may be what the user trained or converted.
        raise ValueError(f"checkpoint {p} holds both config.json (a Hugging Face model) and "
                         "checkpoints/ (a `lladax train` run): refusing to guess; move the HF "
                         "files (config.json, *.safetensors) into a directory of their own")
    if not (is_hf or is_run):
        raise ValueError(f"checkpoint {p} holds neither config.json (a Hugging Face LLaDA model) "
                         "nor checkpoints/ (a `lladax train` run): pass one of those directories")
    if tokenizer is None:
        tok = _tokenizer_in(p)
        if tok is None:
            raise FileNotFoundError(
                f"checkpoint {p} has no tokenizer ({' or '.join(TOKENIZER_FILES)}): pass "
                f"{flag} PATH (the model's tokenizer.json / tokenizer.model, or a directory "
                "holding one)")
        return p, is_hf, tok
    t = Path(tokenizer).expanduser()
    if not t.exists():
        raise FileNotFoundError(f"{flag} {t} does not exist: pass a tokenizer.json / "
                                "tokenizer.model file or a directory holding one")
    if t.is_dir():
        tok = _tokenizer_in(t)
        if tok is None:
            raise FileNotFoundError(f"{flag} {t} holds neither tokenizer.json nor "
                                    "tokenizer.model: pass the tokenizer file or its directory")
        return p, is_hf, tok
    if t.suffix not in (".json", ".model"):
        raise ValueError(f"{flag} {t} is neither a .json (Hugging Face) nor a .model "
                         "(sentencepiece) tokenizer file: pass tokenizer.json or tokenizer.model")
    return p, is_hf, t


def load_model(path: str, dtype: str | None = None, tokenizer: str | None = None, *,
               flag: str = "--tokenizer") -> tuple[Any, Any, Any]:
    """(cfg, params, tokenizer) from a run directory (Orbax) or a Hugging Face LLaDA directory.

    Paths are checked (`check_model_path`) and the tokenizer loaded before any weight is read.
    """
    import jax.numpy as jnp

    from lladax import checkpoint, convert
    from lladax.tokenizer import check_compatible, load_tokenizer

    p, is_hf, tok_path = check_model_path(path, tokenizer, flag=flag)
    tok = load_tokenizer(tok_path)
    if is_hf:
        cfg, params = convert.load_hf(p, jnp.dtype(dtype or "float32"))
    else:
        cfg, params = checkpoint.load_params(p, dtype=dtype)
    check_compatible(tok, cfg)
    return cfg, params, tok


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True,
                   help="a `lladax train` workdir or a Hugging Face LLaDA directory")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="compute/param dtype (default: as saved; HF dirs load as float32)")
    p.add_argument("--tokenizer", default=None, metavar="PATH", help=TOKENIZER_HELP)


def add_sampling_args(p: argparse.ArgumentParser, *, gen_length: int = 64) -> None:
    g = p.add_argument_group("sampling (reference generate.py semantics)")
    g.add_argument("--gen-length", type=int, default=gen_length)
    g.add_argument("--steps", type=int, default=None, help="default: gen-length")
    g.add_argument("--block-length", type=int, default=None,
                   help="semi-autoregressive block size (default: gen-length = pure diffusion)")
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--cfg-scale", type=float, default=0.0, help="classifier-free guidance")
    g.add_argument("--remasking", default="low_confidence", choices=["low_confidence", "random"])
    g.add_argument("--logits-eos-inf", action="store_true", help="never generate EOS")
    g.add_argument("--confidence-eos-eot-inf", action="store_true",
                   help="commit EOS/EOT last (reference flag)")
    g.add_argument("--early-exit", action="store_true",
                   help="skip blocks once a row has finished with EOS (same tokens)")
    g.add_argument("--seed", type=int, default=0)


def _check_number(flag: str, value: float, *, low: float, strict: bool, fix: str) -> None:
    ok = math.isfinite(value) and (value > low if strict else value >= low)
    if not ok:
        raise ValueError(f"{flag} {value} must be a finite number {'>' if strict else '>='} "
                         f"{low:g} ({fix})")


def _examples(values: list[int]) -> str:
    return ", ".join(str(v) for v in values[:4]) + (" ..." if len(values) > 4 else "")


def check_sampling_args(args: argparse.Namespace) -> None:
    """Every sampling flag of `add_sampling_args` (and `add_fast_args` when present), checked
    before the model loads, with the sampler's own rules (denoise.check_options,
    fast_sampling._check_fast): each error names the flag and the fix."""
    if args.gen_length < 1:
        raise ValueError(f"--gen-length {args.gen_length} must be >= 1 (tokens to generate)")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps {args.steps} must be >= 1 (omit it for one token per step: "
                         "--steps = --gen-length)")
    if args.block_length is not None and args.block_length < 1:
        raise ValueError(f"--block-length {args.block_length} must be >= 1 (omit it for one "
                         "block: --block-length = --gen-length)")
    gen, block = args.gen_length, args.block_length or args.gen_length
    if gen % block:
        divisors = [d for d in range(1, gen + 1) if gen % d == 0]
        raise ValueError(f"--block-length {block} does not divide --gen-length {gen}: pass a "
                         f"divisor of {gen} ({_examples(divisors)})")
    steps, n_blocks = args.steps if args.steps is not None else gen, gen // block
    if steps % n_blocks:
        raise ValueError(f"--steps {steps} is not a multiple of the number of blocks {n_blocks} "
                         f"(--gen-length {gen} / --block-length {block}): pass a multiple of "
                         f"{n_blocks}, e.g. {n_blocks * max(1, steps // n_blocks)}")
    _check_number("--temperature", args.temperature, low=0, strict=False, fix="0 = greedy")
    _check_number("--cfg-scale", args.cfg_scale, low=0, strict=False, fix="0 = no guidance")
    if not 0 <= args.seed < 2**63:
        raise ValueError(f"--seed {args.seed} must be an integer in [0, 2**63)")
    if getattr(args, "threshold", None) is not None:
        _check_number("--threshold", args.threshold, low=0, strict=False,
                      fix="e.g. 0.9; above 1 commits no extra tokens")
    if getattr(args, "factor", None) is not None:
        _check_number("--factor", args.factor, low=0, strict=True, fix="e.g. 1.0")
        if args.threshold is not None:
            raise ValueError("--threshold and --factor are two rules for the same choice: pass "
                             "one of them")


def sampling_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The sampler's keyword arguments from flags already checked by `check_sampling_args`
    (None means the default: --steps and --block-length = --gen-length)."""
    import jax

    return dict(steps=args.steps if args.steps is not None else args.gen_length,
                gen_length=args.gen_length,
                block_length=args.block_length if args.block_length is not None
                else args.gen_length,
                temperature=args.temperature, cfg_scale=args.cfg_scale,
                remasking=args.remasking, logits_eos_inf=args.logits_eos_inf,
                confidence_eos_eot_inf=args.confidence_eos_eot_inf,
                rng=jax.random.key(args.seed))


def generate(params: Any, cfg: Any, tokens: Any, attention_mask: Any, kwargs: dict[str, Any],
             **extra: Any) -> Any:
    """Decode with the sampler of the model's kind: the diffusion sampler (`sampling_kwargs` and
    `extra`), or left to right for an autoregressive baseline (gen_length, temperature, rng)."""
    if cfg.causal:
        from lladax import autoregressive

        if extra.get("return_history"):
            raise ValueError("--show-steps shows the diffusion sampler's canvas; this model is "
                             "autoregressive (kind='autoregressive'): drop --show-steps")
        return autoregressive.generate(params, cfg, tokens, attention_mask,
                                       gen_length=kwargs["gen_length"],
                                       temperature=kwargs["temperature"], rng=kwargs["rng"])
    from lladax import sampling

    return sampling.generate(params, cfg, tokens, attention_mask, **kwargs, **extra)


def add_fast_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("fast decoding (lladax.fast_sampling; docs/fast_decoding.md)")
    g.add_argument("--fast", action="store_true",
                   help="Fast-dLLM decoding: dual KV cache + confidence threshold 0.9 unless "
                        "--cache / --threshold / --factor say otherwise (each implies --fast)")
    g.add_argument("--cache", choices=["none", "prefix", "dual"], default=None,
                   help="KV cache refreshed at each block start (default with --fast: dual)")
    g.add_argument("--threshold", type=float, default=None,
                   help="also commit every block mask with confidence >= this (default with "
                        "--fast: 0.9; > 1 turns parallel commits off)")
    g.add_argument("--factor", type=float, default=None,
                   help="Fast-dLLM factor rule instead of a fixed threshold (e.g. 1.0)")


def fast_kwargs(args: argparse.Namespace) -> dict[str, Any] | None:
    """`fast_sampling.generate` options, or None when no fast-decoding flag was given."""
    if not (args.fast or args.cache or args.threshold is not None or args.factor is not None):
        return None
    threshold = args.threshold
    if threshold is None and args.factor is None:
        threshold = 0.9
    return dict(cache=args.cache or "dual", threshold=threshold, factor=args.factor)
