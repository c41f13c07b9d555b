"""The lm-evaluation-harness adapter's model args (`key=value,...`), parsed and checked without
importing the harness itself: `lladax eval` and the eval configs check them before anything
loads.

The adapter's own args (checkpoint, mc_num, batch_size, chat, ...) are declared here; the
sampler's come from `SamplerConfig`, every option (its types, defaults and rules; cache, threshold
and factor select fast decoding), with two explicit overrides (`EVAL_SAMPLER`): upstream evaluates
with gen_length = steps = block_length = 1024, and early_exit is on (a row stops once its answer is
final: the same answers, fewer forwards; `early_exit=false` runs every step as upstream does).
"""

from __future__ import annotations

import math
from typing import Any

from lladax.diffusion.sampler_config import MODEL_ARG, SamplerConfig

# The sampler of upstream's lm-eval runs (steps and block_length default to gen_length), with early
# exit: it only freezes rows whose answer is final, so generate_until returns the same texts.
EVAL_SAMPLER = SamplerConfig(gen_length=1024, early_exit=True)
# name -> (type, default) of the adapter's own args.
OWN_ARGS: dict[str, tuple[type, Any]] = {
    "checkpoint": (str, None),  # `lladax train` workdir (Orbax) or Hugging Face LLaDA dir
    "tokenizer": (str, None),  # tokenizer.json / tokenizer.model (default: the checkpoint's)
    "dtype": (str, None),  # float32 | bfloat16 (default: as saved; HF dirs: float32)
    "mc_num": (int, 128),  # Monte-Carlo samples per loglikelihood request
    "batch_size": (int, 16),  # MC batch (rows per iteration) and prompts per generate call
    "pair_batch": (int, None),  # loglikelihood requests per forward (default 16//batch_size)
    "add_bos": (bool, True),  # prepend BOS to every context (LLaDA's tokenizer does)
    "max_length": (int, None),  # longest scored sequence (default: the model's max_seq_len)
    "seed": (int, 1234),  # upstream seeds everything with 1234
    "chat": (bool, False),  # contexts are user messages: the chat template, replies scored/cut
}
SAMPLER_ARGS = tuple(SamplerConfig.options())
# Every model arg: name -> (type, default). cfg_scale serves both request types.
MODEL_ARGS: dict[str, tuple[type, Any]] = OWN_ARGS | {
    n: (SamplerConfig.options()[n], getattr(EVAL_SAMPLER, n)) for n in SAMPLER_ARGS
}
ALIASES = {"pretrained": "checkpoint", "model_path": "checkpoint", "cfg": "cfg_scale"}
# Passed by the harness itself (simple_evaluate's batch_size/device flags): accepted, not needed.
_HARNESS_ARGS = {"max_batch_size", "device"}
DTYPES = ("float32", "bfloat16")
# Each own int arg's smallest valid value (None: unset is allowed and means the default).
_MIN_INT = {"mc_num": 1, "batch_size": 1, "pair_batch": 1, "max_length": 1, "seed": 0}


def parse_arg_string(text: str) -> dict[str, str]:
    """`key=value,key=value` -> {key: value} (values stay strings; `parse_model_args` types
    them). An item without `=` or with an empty key is an error, not silently dropped."""
    out: dict[str, str] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(
                f"model arg {item.strip()!r} is not key=value: write e.g. "
                "--model-args mc_num=32,cfg_scale=0.5"
            )
        out[key.strip()] = value.strip()
    return out


def _typed(key: str, value: Any) -> Any:
    """One model arg as its declared type, strictly (4.5 is not an int, 'yes' not a bool)."""
    typ = MODEL_ARGS[key][0]
    if value is None or (
        isinstance(value, str)
        and value.lower() == "none"
        and not (key == "cache" and value == "none")
    ):  # 'none' is unset, except the cache mode "none" (fast decoding with exact forwards)
        return None
    if typ is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"model arg {key}={value!r} must be true or false")
        return str(value).lower() in ("true", "1")
    if typ is str:
        return str(value)
    if isinstance(value, bool):
        raise ValueError(f"model arg {key}={value!r} must be {typ.__name__}")
    try:
        number = typ(value) if isinstance(value, str) else value
        if typ is int and (not float(number).is_integer()):
            raise ValueError
        number = typ(number)
    except (TypeError, ValueError):
        raise ValueError(f"model arg {key}={value!r} must be {typ.__name__}") from None
    if typ is float and not math.isfinite(number):
        raise ValueError(f"model arg {key}={value!r} must be a finite number")
    return number


def check_model_args(args: dict[str, Any]) -> tuple[dict[str, Any], SamplerConfig]:
    """Type and check model args (from `parse_arg_string`, the harness or an eval config) ->
    (the adapter's own options, defaults filled in; the `SamplerConfig`). Unknown keys and bad
    values are one-line errors. The checkpoint may be missing (eval configs name none)."""
    opts = {k: default for k, (_, default) in OWN_ARGS.items()}
    sampler_args: dict[str, Any] = {}
    for key, value in args.items():
        key = ALIASES.get(key, key)
        if key in _HARNESS_ARGS:
            continue
        if key not in MODEL_ARGS:
            raise ValueError(
                f"unknown model arg {key!r}: choose from {', '.join(sorted(MODEL_ARGS))}"
            )
        (sampler_args if key in SAMPLER_ARGS else opts)[key] = _typed(key, value)
    for key, low in _MIN_INT.items():
        if opts[key] is not None and opts[key] < low:
            raise ValueError(f"model arg {key}={opts[key]} must be >= {low}")
    if opts["batch_size"] is None or opts["mc_num"] is None:
        raise ValueError("model args mc_num and batch_size need values (positive integers)")
    if opts["mc_num"] % opts["batch_size"]:
        raise ValueError(
            f"mc_num={opts['mc_num']} must be a positive multiple of batch_size="
            f"{opts['batch_size']}"
        )
    if opts["dtype"] is not None and opts["dtype"] not in DTYPES:
        raise ValueError(f"model arg dtype={opts['dtype']!r}: use one of {', '.join(DTYPES)}")
    return opts, SamplerConfig.parse(sampler_args, MODEL_ARG, base=EVAL_SAMPLER)


def parse_model_args(args: dict[str, Any]) -> tuple[dict[str, Any], SamplerConfig]:
    """`check_model_args` for the adapter, which also needs the checkpoint: nothing loads
    before this."""
    opts, sampler = check_model_args(args)
    if not opts["checkpoint"]:
        raise ValueError(
            "model arg checkpoint=DIR is required (a `lladax train` workdir or a "
            "Hugging Face LLaDA directory)"
        )
    return opts, sampler


def recorded(opts: dict[str, Any], sampler: SamplerConfig) -> dict[str, Any]:
    """Every model arg as used (steps and block_length resolved): what a results file records."""
    resolved = sampler.resolved()
    return opts | {n: getattr(resolved, n) for n in SAMPLER_ARGS}
