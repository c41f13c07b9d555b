"""Shared CLI glue: load a model + tokenizer from a `lladax train` run or a HF directory."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def load_model(path: str, dtype: str | None = None) -> tuple[Any, Any, Any]:
    """(cfg, params, tokenizer) from a run directory (Orbax) or a Hugging Face LLaDA directory."""
    import jax.numpy as jnp

    from lladax import checkpoint, convert
    from lladax.tokenizer import check_compatible, load_tokenizer

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {p} does not exist: pass a `lladax train` workdir "
                                "or a Hugging Face LLaDA directory")
    if (p / "config.json").exists():
        cfg, params = convert.load_hf(p, jnp.dtype(dtype or "float32"))
        tokenizer = load_tokenizer(p)
    else:
        cfg, params = checkpoint.load_params(p, dtype=dtype)
        tokenizer = load_tokenizer(p)  # tokenizer.model (lladax train) or tokenizer.json (HF)
    check_compatible(tokenizer, cfg)
    return cfg, params, tokenizer


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True,
                   help="a `lladax train` workdir or a Hugging Face LLaDA directory")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="compute/param dtype (default: as saved; HF dirs load as float32)")


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


def sampling_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    import jax

    return dict(steps=args.steps or args.gen_length, gen_length=args.gen_length,
                block_length=args.block_length or args.gen_length,
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
