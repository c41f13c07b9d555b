"""lm-evaluation-harness adapter: a `LM` subclass registered as `lladax` (upstream eval_llada.py).

  loglikelihood      Monte-Carlo ELBO (`likelihood.log_likelihood_batch`), is_greedy always False
                     (upstream's optional greedy check is off in every published setting)
  generate_until     `sampling.generate` (batch > 1 with left padding), text cut at stop strings
  loglikelihood_rolling  not supported: raises NotImplementedError (no perplexity tasks)

Model args come in lm-eval's `key=value,...` form (see `MODEL_ARGS`); unknown keys are errors.
This module imports lm_eval (the optional extra `lladax[eval]`); nothing else in the core does.

  lm_eval --model lladax --model_args checkpoint=DIR,mc_num=128,cfg_scale=0.5 --tasks arc_challenge
  (after `import lladax.eval.harness`; `lladax eval` does this for you)
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import jax
import numpy as np
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from lladax.batching import bucket_length
from lladax.diffusion import denoise, likelihood, sampling
from lladax.store.loading import load_model

# name -> (type, default). gen defaults are upstream's lm-eval settings (gen_length = steps =
# block_length = 1024); steps / block_length default to gen_length.
MODEL_ARGS: dict[str, tuple[type, Any]] = {
    "checkpoint": (str, None),  # `lladax train` workdir (Orbax) or Hugging Face LLaDA dir
    "tokenizer": (str, None),  # tokenizer.json / tokenizer.model (default: the checkpoint's)
    "dtype": (str, None),  # float32 | bfloat16 (default: as saved; HF dirs: float32)
    "mc_num": (int, 128),  # Monte-Carlo samples per loglikelihood request
    "batch_size": (int, 16),  # MC batch (rows per iteration) and prompts per generate call
    "pair_batch": (int, None),  # loglikelihood requests per forward (default 16//batch_size)
    "cfg_scale": (float, 0.0),  # classifier-free guidance, both request types
    "gen_length": (int, 1024),
    "steps": (int, None),
    "block_length": (int, None),
    "temperature": (float, 0.0),
    "remasking": (str, "low_confidence"),
    "logits_eos_inf": (bool, False),
    "confidence_eos_eot_inf": (bool, False),
    "add_bos": (bool, True),  # prepend BOS to every context (LLaDA's tokenizer does)
    "max_length": (int, None),  # longest scored sequence (default: the model's max_seq_len)
    "seed": (int, 1234),  # upstream seeds everything with 1234
}
ALIASES = {"pretrained": "checkpoint", "model_path": "checkpoint", "cfg": "cfg_scale"}
# Passed by lm-eval itself (simple_evaluate's batch_size/device flags): accepted, not needed.
_HARNESS_ARGS = {"max_batch_size", "device"}
DTYPES = ("float32", "bfloat16")
# check_options only asks whether a key exists; the adapter always derives one from `seed`, and
# making a real key here would start JAX's devices before the arguments are all checked.
_SEEDED: Any = object()
# Each int arg's smallest valid value (None: unset is allowed and means the default).
_MIN_INT = {
    "mc_num": 1,
    "batch_size": 1,
    "pair_batch": 1,
    "gen_length": 1,
    "steps": 1,
    "block_length": 1,
    "max_length": 1,
    "seed": 0,
}


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
    if value is None or (isinstance(value, str) and value.lower() == "none"):
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


def parse_model_args(args: dict[str, Any]) -> dict[str, Any]:
    """Validate and type model args (split by `parse_arg_string` or lm-eval) -> the full option
    dict, every sampler rule included (`denoise.check_options`): nothing loads before this."""
    opts = {k: default for k, (_, default) in MODEL_ARGS.items()}
    for key, value in args.items():
        key = ALIASES.get(key, key)
        if key in _HARNESS_ARGS:
            continue
        if key not in MODEL_ARGS:
            raise ValueError(
                f"unknown model arg {key!r}: choose from {', '.join(sorted(MODEL_ARGS))}"
            )
        opts[key] = _typed(key, value)
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
    if not opts["checkpoint"]:
        raise ValueError(
            "model arg checkpoint=DIR is required (a `lladax train` workdir or a "
            "Hugging Face LLaDA directory)"
        )
    if opts["gen_length"] is None:
        raise ValueError("model arg gen_length needs a value (tokens to generate, e.g. 256)")
    opts["steps"] = opts["gen_length"] if opts["steps"] is None else opts["steps"]
    if opts["block_length"] is None:
        opts["block_length"] = opts["gen_length"]
    for key in ("cfg_scale", "temperature"):
        if opts[key] is None:
            raise ValueError(f"model arg {key} needs a value (a number >= 0)")
    denoise.check_options(
        steps=opts["steps"],
        gen_length=opts["gen_length"],
        block_length=opts["block_length"],
        remasking=opts["remasking"],
        cfg_scale=opts["cfg_scale"],
        temperature=opts["temperature"],
        rng=_SEEDED,
    )
    return opts


def split_context(context: str, continuation: str) -> tuple[str, str]:
    """Upstream's split: trailing whitespace of the context moves into the continuation."""
    n = len(context) - len(context.rstrip())
    return (context[:-n], context[-n:] + continuation) if n else (context, continuation)


@register_model("lladax")
class LLaDAEval(LM):
    """LLaDA for lm-eval. `LLaDAEval(checkpoint=DIR, mc_num=..., ...)` or
    `LLaDAEval.create_from_arg_string("checkpoint=DIR,mc_num=8")`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.opts = parse_model_args(kwargs)  # every option checked before anything loads

        self.cfg, self.params, self.tokenizer = load_model(
            self.opts["checkpoint"],
            self.opts["dtype"],
            self.opts["tokenizer"],
            flag="--tokenizer (model arg tokenizer=)",
        )
        self.max_length = self.opts["max_length"] or self.cfg.max_seq_len

    @classmethod
    def create_from_arg_string(
        cls, arg_string: str, additional_config: dict | None = None
    ) -> LLaDAEval:
        """lm-eval's constructor path. Explicit model args win over the harness's own flags
        (`--batch_size` arrives in additional_config; upstream also reads it as the MC batch)."""
        args = {k: v for k, v in (additional_config or {}).items() if v is not None}
        args.update(parse_arg_string(arg_string))
        return cls(**args)

    # -- loglikelihood ---------------------------------------------------------------------------
    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids) as upstream: encode context+continuation as a whole
        and take the continuation as everything after the context's own encoding."""
        context, continuation = split_context(context, continuation)
        add_bos = self.opts["add_bos"]
        whole = self.tokenizer.encode(context + continuation, add_bos=add_bos)
        ctx = (
            self.tokenizer.encode(context, add_bos=add_bos)
            if context
            else ([self.tokenizer.bos_id] if add_bos else [])
        )
        return ctx, whole[len(ctx) :]

    def loglikelihood(
        self, requests: list[Any], disable_tqdm: bool = False
    ) -> list[tuple[float, bool]]:
        pairs = [self.encode_pair(*req.args) for req in requests]
        for (ctx, cont), req in zip(pairs, requests, strict=True):
            if len(ctx) + len(cont) > self.max_length:
                raise ValueError(
                    f"request of {len(ctx) + len(cont)} tokens exceeds max_length="
                    f"{self.max_length}: raise max_length or shorten the few-shot "
                    "context"
                )
            if not cont:
                raise ValueError(f"continuation {req.args[1]!r} encodes to no tokens")
        # Key per context: every choice of one question sees the same random numbers (common
        # random numbers lower the variance of their comparison), independent of request order.
        base = jax.random.key(self.opts["seed"])
        crcs = np.array([zlib.crc32(req.args[0].encode()) for req in requests], np.uint32)
        keys = jax.vmap(lambda d: jax.random.fold_in(base, d))(crcs) if requests else base
        est = likelihood.log_likelihood_batch(
            self.params,
            self.cfg,
            [c for c, _ in pairs],
            [a for _, a in pairs],
            mc_num=self.opts["mc_num"],
            batch_size=self.opts["batch_size"],
            cfg_scale=self.opts["cfg_scale"],
            rng=keys,
            pairs_per_call=self.opts["pair_batch"],
        )
        return [(float(e), False) for e in est]

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        raise NotImplementedError(
            "lladax does not support loglikelihood_rolling (perplexity tasks such as wikitext): "
            "LLaDA scores a continuation given a context with a Monte-Carlo ELBO, as upstream"
        )

    # -- generate_until --------------------------------------------------------------------------
    def _finish(self, ids: list[int], until: list[str]) -> str:
        """Upstream post-processing: decode with specials, cut at each stop string, then drop
        special tokens by re-encoding and decoding without them."""
        text = self.tokenizer.decode(ids, skip_special=False)
        for stop in until:
            if stop and stop in text:
                text = text.split(stop)[0]
        return self.tokenizer.decode(self.tokenizer.encode(text), skip_special=True)

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        o = self.opts
        prompts = []
        for req in requests:
            ctx = req.args[0]
            prompts.append(
                self.tokenizer.encode(ctx, add_bos=o["add_bos"]) or [self.tokenizer.bos_id]
            )
        out: list[str] = [""] * len(requests)
        order = sorted(range(len(requests)), key=lambda i: len(prompts[i]))
        bs, pad = o["batch_size"], self.cfg.pad_token_id
        for start in range(0, len(order), bs):
            chunk = order[start : start + bs]
            # Left padding to a bucketed length, last chunk filled with copies: few programs.
            idx = chunk + [chunk[-1]] * (min(bs, len(order)) - len(chunk))
            P = bucket_length(max(len(prompts[i]) for i in idx))
            tokens = np.full((len(idx), P), pad, np.int32)
            mask = np.zeros((len(idx), P), np.int32)
            for r, i in enumerate(idx):
                tokens[r, P - len(prompts[i]) :] = prompts[i]
                mask[r, P - len(prompts[i]) :] = 1
            canvas = np.asarray(
                sampling.generate(
                    self.params,
                    self.cfg,
                    tokens,
                    mask,
                    steps=o["steps"],
                    gen_length=o["gen_length"],
                    block_length=o["block_length"],
                    temperature=o["temperature"],
                    cfg_scale=o["cfg_scale"],
                    remasking=o["remasking"],
                    logits_eos_inf=o["logits_eos_inf"],
                    confidence_eos_eot_inf=o["confidence_eos_eot_inf"],
                    rng=jax.random.fold_in(jax.random.key(o["seed"]), start),
                )
            )
            for r, i in enumerate(chunk):
                until = requests[i].args[1].get("until") or []
                until = [until] if isinstance(until, str) else list(until)
                out[i] = self._finish(canvas[r, P:].tolist(), until)
                self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
        return out
