"""Shared CLI glue: how a subcommand registers its parser (`command_parser`), and the model and
sampling flags of `sample` / `chat` (the model itself is loaded by `lladax.store.loading`).

The sampling flags are `SamplerConfig`'s options (defaults and choices from it), and
`sampler_config_from_args` checks them before anything slow starts (no weights read), each error
naming the flag and the fix.
"""

from __future__ import annotations

import argparse
from typing import Any

from lladax.diffusion.sampler_config import FLAGS, SamplerConfig

TOKENIZER_HELP = (
    "the model's tokenizer: a tokenizer.json / tokenizer.model file or a directory "
    "holding one (default: the one in --checkpoint)"
)


def command_parser(
    sub: argparse._SubParsersAction, name: str, summary: str, doc: str | None
) -> argparse.ArgumentParser:
    """The parser of subcommand `name`: `summary` is its line in `lladax --help`, `doc` (the
    command module's docstring) heads `lladax NAME --help`, laid out as written."""
    return sub.add_parser(
        name, help=summary, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
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


def add_sampling_args(p: argparse.ArgumentParser, defaults: SamplerConfig | None = None) -> None:
    """The sampler's flags (one per `SamplerConfig` option, same name with dashes), its defaults
    and choices, and --seed. `defaults` overrides some (chat generates 128 tokens)."""
    defaults = SamplerConfig() if defaults is None else defaults
    g = p.add_argument_group("sampling (reference generate.py semantics; SamplerConfig)")
    g.add_argument("--gen-length", type=int, default=defaults.gen_length)
    g.add_argument("--steps", type=int, default=defaults.steps, help="default: gen-length")
    g.add_argument(
        "--block-length",
        type=int,
        default=defaults.block_length,
        help="semi-autoregressive block size (default: gen-length = pure diffusion)",
    )
    g.add_argument("--temperature", type=float, default=defaults.temperature)
    g.add_argument(
        "--cfg-scale", type=float, default=defaults.cfg_scale, help="classifier-free guidance"
    )
    g.add_argument("--remasking", default=defaults.remasking, choices=SamplerConfig.REMASKING)
    g.add_argument(
        "--logits-eos-inf",
        action="store_true",
        default=defaults.logits_eos_inf,
        help="never generate EOS",
    )
    g.add_argument(
        "--confidence-eos-eot-inf",
        action="store_true",
        default=defaults.confidence_eos_eot_inf,
        help="commit EOS/EOT last (reference flag)",
    )
    g.add_argument(
        "--early-exit",
        action=argparse.BooleanOptionalAction,
        default=defaults.early_exit,
        help="skip the rest once a row has finished with EOS (default: the model kind's; LLaDA: "
        "off, same tokens either way; block diffusion: on, a row stops at its EOS block)",
    )
    g.add_argument("--seed", type=int, default=0)


def add_fast_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "fast decoding (lladax.diffusion.fast_sampling; docs/fast_decoding.md)"
    )
    g.add_argument(
        "--fast",
        action="store_true",
        help=f"Fast-dLLM decoding: {SamplerConfig.FAST_CACHE} KV cache + confidence threshold "
        f"{SamplerConfig.FAST_THRESHOLD} unless --cache / --threshold / --factor say otherwise "
        "(each implies --fast)",
    )
    g.add_argument(
        "--cache",
        choices=SamplerConfig.CACHE_MODES,
        default=None,
        help=f"KV cache refreshed at each block start (default with --fast: "
        f"{SamplerConfig.FAST_CACHE})",
    )
    g.add_argument(
        "--threshold",
        type=float,
        default=None,
        help=f"also commit every block mask with confidence >= this (default with --fast: "
        f"{SamplerConfig.FAST_THRESHOLD}; > 1 turns parallel commits off)",
    )
    g.add_argument(
        "--factor",
        type=float,
        default=None,
        help="Fast-dLLM factor rule instead of a fixed threshold (e.g. 1.0)",
    )


def sampler_config_from_args(args: argparse.Namespace) -> SamplerConfig:
    """The `SamplerConfig` of the flags of `add_sampling_args` (and `add_fast_args` when
    present), checked before the model loads (no JAX, no weights): each error names the flag
    and the fix. Any fast-decoding flag selects fast decoding, Fast-dLLM's setting filling the
    rest (`SamplerConfig.FAST_CACHE`, and `FAST_THRESHOLD` unless --factor is given). --seed
    (the rng's, see `rng_from_args`) is checked here too."""
    if not 0 <= args.seed < 2**63:
        raise ValueError(f"--seed {args.seed} must be an integer in [0, 2**63)")
    values = {name: getattr(args, name) for name in SamplerConfig.options() if hasattr(args, name)}
    if getattr(args, "fast", False) or any(
        values.get(name) is not None for name in SamplerConfig.FAST_OPTIONS
    ):
        values["cache"] = values.get("cache") or SamplerConfig.FAST_CACHE
        if values.get("threshold") is None and values.get("factor") is None:
            values["threshold"] = SamplerConfig.FAST_THRESHOLD
    return SamplerConfig.parse(values, FLAGS)


def rng_from_args(args: argparse.Namespace) -> Any:
    """The sampler's `jax.random` key from --seed (checked by `sampler_config_from_args`)."""
    import jax

    return jax.random.key(args.seed)


def generate(
    params: Any,
    cfg: Any,
    tokens: Any,
    attention_mask: Any,
    sampler: SamplerConfig,
    rng: Any,
    *,
    return_history: bool = False,
    return_stats: bool = False,
) -> Any:
    """Decode with the sampler of the model's kind: LLaDA's (exact or fast) and block diffusion's
    (`block_sampling`) through `sampling.generate_with` (return_stats: its stats too), or left
    to right for an autoregressive baseline (gen_length, temperature and rng only)."""
    if return_history and cfg.kind != "diffusion":
        raise ValueError(
            "--show-steps shows the LLaDA sampler's canvas step by step; this model is "
            f"{cfg.kind.replace('_', ' ')} (kind={cfg.kind!r}): drop --show-steps"
        )
    from lladax.diffusion import sampling

    return sampling.generate_any(
        params,
        cfg,
        tokens,
        attention_mask,
        sampler,
        rng,
        return_history=return_history,
        return_stats=return_stats,
    )
