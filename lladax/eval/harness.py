"""lm-evaluation-harness adapter: a `LM` subclass registered as `lladax` (upstream eval_llada.py).

  loglikelihood      Monte-Carlo ELBO (`likelihood.log_likelihood_batch`), is_greedy always False
                     (upstream's optional greedy check is off in every published setting)
  generate_until     `sampling.generate_with` (batch > 1, left padding), text cut at stop strings;
                     early exit on by default (`model_args.EVAL_SAMPLER`: the same texts, fewer
                     forwards), fast decoding with the model args cache / threshold / factor
  loglikelihood_rolling  not supported: raises NotImplementedError (no perplexity tasks)

Requests of either type are sorted by length and batched into bucketed shapes
(`batching.bucket_length`), so a task compiles a few programs. LLaDA and block-diffusion
checkpoints are served (a block-diffusion model's loglikelihood is its block ELBO, its generation
the block sampler: both chosen by the model's kind); the autoregressive baseline is refused in one
line. Model arg `chat=true` treats each context as a user message (`chat.apply_chat_template`;
a continuation is scored as the reply plus EOT, a generation read back with `decode_reply`): what
a chat-tuned model such as the SFT demo needs.

Model args come in lm-eval's `key=value,...` form (`lladax.eval.model_args`: the adapter's own and
the sampler's, `SamplerConfig`); unknown keys are errors. This module imports lm_eval (the optional
extra `lladax[eval]`); nothing else in the core does.

  python -m lladax.eval.harness --model lladax --model_args checkpoint=DIR,cfg_scale=0.5 \
      --tasks arc_challenge
  (lm-eval's own CLI, run with this module imported: lm-eval 0.4 finds no third-party model by
  itself, so the bare `lm_eval` script does not know `lladax`; `lladax eval` also imports it)
  The package's offline tasks (`lladax.eval.tasks.synth`): --tasks lladax_synth_gen,lladax_synth_mc
  --include_path <lladax/eval/tasks>.
"""

from __future__ import annotations

import zlib
from typing import Any

import jax
import numpy as np
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from lladax.batching import bucket_length, left_pad
from lladax.config import check_kind
from lladax.data.chat import apply_chat_template, check_chat_tokenizer, encode_reply
from lladax.diffusion import likelihood, sampling
from lladax.diffusion.sampler_config import MODEL_ARG
from lladax.eval.model_args import parse_arg_string, parse_model_args, recorded
from lladax.store.loading import load_model

SERVED_KINDS = ("diffusion", "block_diffusion")  # the kinds both request types serve


def split_context(context: str, continuation: str) -> tuple[str, str]:
    """Upstream's split: trailing whitespace of the context moves into the continuation."""
    n = len(context) - len(context.rstrip())
    return (context[:-n], context[-n:] + continuation) if n else (context, continuation)


def cut_at_stops(text: str, until: list[str]) -> str:
    """`text` up to the first occurrence of each stop string, in turn (upstream's loop)."""
    for stop in until:
        if stop and stop in text:
            text = text.split(stop)[0]
    return text


@register_model("lladax")
class LLaDAEval(LM):
    """LLaDA for lm-eval. `LLaDAEval(checkpoint=DIR, mc_num=..., ...)` or
    `LLaDAEval.create_from_arg_string("checkpoint=DIR,mc_num=8")`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        # every option checked before anything loads
        self.opts, sampler = parse_model_args(kwargs)

        self.cfg, self.params, self.tokenizer = load_model(
            self.opts["checkpoint"],
            self.opts["dtype"],
            self.opts["tokenizer"],
            flag="--tokenizer (model arg tokenizer=)",
        )
        check_kind(self.cfg, SERVED_KINDS, "the lm-eval adapter (lladax eval)")
        if self.opts["chat"]:
            check_chat_tokenizer(self.tokenizer)
        # The kind's rules (LLaDA: threshold / factor need a cache), checked before any compile.
        self.sampler = sampler.for_kind(self.cfg.kind, MODEL_ARG)
        self.max_length = self.opts["max_length"] or self.cfg.max_seq_len
        self.forward_passes = 0  # model forwards of generate_until so far (for benchmarks)

    @property
    def model_args(self) -> dict[str, Any]:
        """Every model arg as used (the sampler's resolved): what the results record."""
        return recorded(self.opts, self.sampler)

    @classmethod
    def create_from_arg_obj(
        cls, arg_dict: dict[str, Any], additional_config: dict | None = None
    ) -> LLaDAEval:
        """lm-eval's constructor path (its CLI passes the model args as a dict). Explicit model
        args win over the harness's own flags (`--batch_size` arrives in additional_config;
        upstream also reads it as the MC batch)."""
        args = {k: v for k, v in (additional_config or {}).items() if v is not None}
        args.update(arg_dict)
        return cls(**args)

    @classmethod
    def create_from_arg_string(
        cls, arg_string: str, additional_config: dict | None = None
    ) -> LLaDAEval:
        """`create_from_arg_obj` from `key=value,...`."""
        return cls.create_from_arg_obj(parse_arg_string(arg_string), additional_config)

    # -- loglikelihood ---------------------------------------------------------------------------
    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids) as upstream: encode context+continuation as a whole
        and take the continuation as everything after the context's own encoding. With model arg
        chat: the templated user message, and the reply's ids followed by EOT."""
        if self.opts["chat"]:
            reply = [*encode_reply(self.tokenizer, continuation), self.tokenizer.eot_id]
            return self._prompt_ids(context), reply
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
            cfg_scale=self.sampler.cfg_scale,
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
    def _prompt_ids(self, context: str) -> list[int]:
        """A context's prompt ids: with model arg chat the chat template around it as a user
        message, else its encoding (BOS first with add_bos; never empty)."""
        if self.opts["chat"]:
            return apply_chat_template(self.tokenizer, [{"role": "user", "content": context}])
        ids = self.tokenizer.encode(context, add_bos=self.opts["add_bos"])
        return ids or [self.tokenizer.bos_id]

    def _finish(self, ids: list[int], until: list[str]) -> str:
        """Upstream post-processing: decode with specials, cut at each stop string, then drop
        special tokens by re-encoding and decoding without them. With model arg chat: the reply
        (`decode_reply`: up to its EOT / EOS), cut at each stop string."""
        if self.opts["chat"]:
            return cut_at_stops(self.tokenizer.decode_reply(ids), until)
        text = cut_at_stops(self.tokenizer.decode(ids, skip_special=False), until)
        return self.tokenizer.decode(self.tokenizer.encode(text), skip_special=True)

    def _generate(self, rows: list[list[int]], num_rows: int, rng: jax.Array) -> np.ndarray:
        """One sampler call on prompts left-padded to a bucketed width (the batch filled to
        `num_rows` with copies: few programs) -> the generated ids [len(rows), gen_length]."""
        P = bucket_length(max(len(r) for r in rows))
        tokens, mask = left_pad(rows, self.cfg.pad_token_id, width=P, num_rows=num_rows)
        canvas, stats = sampling.generate_with(
            self.params, self.cfg, tokens, mask, self.sampler, rng, return_stats=True
        )
        # batch forwards run: the exact sampler's "forward_passes", fast / block "evaluations"
        self.forward_passes += int(stats.get("forward_passes", stats.get("evaluations")))
        return np.asarray(canvas)[: len(rows), P:]

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        prompts = [self._prompt_ids(req.args[0]) for req in requests]
        out: list[str] = [""] * len(requests)
        order = sorted(range(len(requests)), key=lambda i: len(prompts[i]))
        bs = self.opts["batch_size"]
        for start in range(0, len(order), bs):
            chunk = order[start : start + bs]
            rng = jax.random.fold_in(jax.random.key(self.opts["seed"]), start)
            generated = self._generate([prompts[i] for i in chunk], min(bs, len(order)), rng)
            for r, i in enumerate(chunk):
                until = requests[i].args[1].get("until") or []
                until = [until] if isinstance(until, str) else list(until)
                out[i] = self._finish(generated[r].tolist(), until)
                self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
        return out


def main() -> None:
    """`python -m lladax.eval.harness ARGS`: lm-eval's own CLI (its flags, its output) with the
    `lladax` model registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
