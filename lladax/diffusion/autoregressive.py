"""The autoregressive baseline: LLaDA's network with causal attention and the next-token loss.

The paper's claims are comparisons with an autoregressive model of the same size trained on the
same data. Here that model is `ModelConfig(kind="autoregressive")`: the same parameters, blocks,
configs, data pipeline, train loop and checkpoints — only the attention is causal (query i sees
keys <= i) and the loss is the exact negative log-likelihood of the next token:

  loss = Σ_i CE(logits[:, i], tokens[:, i + 1]) over targets that are real tokens of the same
         document as their context (and answer tokens in SFT) ÷ the number of such targets

(`train.loss_fn` dispatches on `cfg.kind`). Decoding is left to right with a KV cache (one
compiled program for prompt, then `gen_length - 1` cached single-token steps), greedy or with a
temperature, and returns the same [batch, prompt + gen_length] canvas as `sampling.generate`, so
`sampling.decode_answer` and the evaluation code serve both model kinds.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lladax.config import ModelConfig, check_kind
from lladax.model import transformer


def target_mask(
    tokens: jax.Array,
    attention_mask: jax.Array | None = None,
    *,
    segment_ids: jax.Array | None = None,
    prompt_lengths: jax.Array | None = None,
) -> jax.Array:
    """[batch, seq - 1] bool: which next-token targets tokens[:, 1:] count in the loss.

    A target counts when it and its predecessor are real tokens (attention_mask [batch, seq]),
    of the same document (segment_ids [batch, seq], 0 = padding: no prediction across a packing
    boundary) and, with prompt_lengths [batch] (SFT), part of the answer.
    """
    valid = jnp.ones((tokens.shape[0], tokens.shape[1] - 1), bool)
    if attention_mask is not None:
        real = attention_mask.astype(bool)
        valid &= real[:, 1:] & real[:, :-1]
    if segment_ids is not None:
        valid &= (segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, 1:] > 0)
    if prompt_lengths is not None:
        valid &= jnp.arange(1, tokens.shape[1])[None, :] >= prompt_lengths[:, None]
    return valid


def token_nll(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """-log p(tokens[:, i + 1] | tokens[:, :i + 1]) for every i: [batch, seq - 1] float32, from
    the causal model's logits [batch, seq, vocab] on tokens [batch, seq]."""
    return transformer.cross_entropy(logits[:, :-1], tokens[:, 1:])


def next_token_loss(
    params: Any,
    cfg: ModelConfig,
    tokens: jax.Array,
    attention_mask: jax.Array | None = None,
    *,
    packing: transformer.Packing = transformer.UNPACKED,
    prompt_lengths: jax.Array | None = None,
) -> jax.Array:
    """Mean next-token cross-entropy (nats per token) over the targets of `target_mask`.

    tokens [batch, seq] int; packed rows pass their `transformer.Packing`; attention_mask and
    prompt_lengths as in `target_mask`.
    """
    nll = token_nll(transformer.apply(params, cfg, tokens, attention_mask, packing=packing), tokens)
    valid = target_mask(
        tokens, attention_mask, segment_ids=packing.segment_ids, prompt_lengths=prompt_lengths
    )
    return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


@functools.partial(jax.jit, static_argnames=("cfg",))
def sequence_log_prob(
    params: Any,
    cfg: ModelConfig,
    tokens: jax.Array,
    attention_mask: jax.Array,
    prompt_lengths: jax.Array,
) -> jax.Array:
    """Exact log p(answer | prompt) per row [batch] float32.

    tokens [batch, seq] = prompt + answer (+ right padding), attention_mask [batch, seq] (1 =
    real; left or right padding both work), prompt_lengths [batch] = index of the first answer
    token in the row (counting any left padding).
    """
    nll = token_nll(transformer.apply(params, cfg, tokens, attention_mask), tokens)
    valid = target_mask(tokens, attention_mask, prompt_lengths=prompt_lengths)
    return -jnp.sum(jnp.where(valid, nll, 0.0), axis=1)


def _pick(logits: jax.Array, key: jax.Array, temperature: float) -> jax.Array:
    """logits [batch, vocab] -> token ids [batch]: argmax, or a sample at `temperature`."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, logits / temperature, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("cfg", "gen_length", "temperature"))
def _generate(
    params: Any,
    cfg: ModelConfig,
    prompt: jax.Array,
    prompt_mask: jax.Array,
    rng: jax.Array,
    *,
    gen_length: int,
    temperature: float,
) -> jax.Array:
    batch, prompt_len = prompt.shape
    stops = jnp.asarray(
        [cfg.eos_token_id] + ([cfg.eot_token_id] if cfg.eot_token_id is not None else [])
    )
    key_mask = jnp.concatenate([prompt_mask, jnp.ones((batch, gen_length), bool)], axis=1)
    logits, cache = transformer.apply(params, cfg, prompt, prompt_mask, return_cache=True)
    # The cache covers the whole canvas; positions not yet decoded hold zeros, which the causal
    # mask keeps every query from seeing.
    cache = transformer.KVCache(
        *(jnp.pad(c, ((0, 0), (0, 0), (0, gen_length), (0, 0), (0, 0))) for c in cache)
    )
    first = _pick(logits[:, -1], jax.random.fold_in(rng, 0), temperature)
    canvas = jnp.concatenate(
        [prompt, jnp.full((batch, gen_length), cfg.eos_token_id, prompt.dtype)], axis=1
    )

    def step(carry, i):
        canvas, cache, token, done = carry
        token = jnp.where(done, cfg.eos_token_id, token)  # after a stop token: EOS padding
        canvas = jax.lax.dynamic_update_slice_in_dim(canvas, token[:, None], prompt_len + i, 1)
        done |= jnp.isin(token, stops)
        logits, cache = transformer.apply(
            params,
            cfg,
            token[:, None],
            key_mask,
            cache=cache,
            cache_start=prompt_len + i,
            return_cache=True,
        )
        nxt = _pick(logits[:, 0], jax.random.fold_in(rng, i + 1), temperature)
        return (canvas, cache, nxt, done), None

    init = (canvas, cache, first, jnp.zeros((batch,), bool))
    (canvas, _, last, done), _ = jax.lax.scan(step, init, jnp.arange(gen_length - 1))
    last = jnp.where(done, cfg.eos_token_id, last)
    return jax.lax.dynamic_update_slice_in_dim(
        canvas, last[:, None], prompt_len + gen_length - 1, 1
    )


def generate(
    params: Any,
    cfg: ModelConfig,
    prompt: Any,
    attention_mask: Any = None,
    *,
    gen_length: int,
    temperature: float = 0.0,
    rng: jax.Array | None = None,
) -> jax.Array:
    """Left-to-right decoding: prompt [batch, P] -> canvas [batch, P + gen_length] int32.

    attention_mask [batch, P] (1 = real token; prompts of different lengths are LEFT-padded so
    that every row's next token goes at the same index). temperature 0 = greedy; otherwise `rng`
    (a `jax.random` key) is required. After a row emits EOS or EoT the rest of it is EOS, so
    `sampling.decode_answer` cuts the answer there as for the diffusion sampler.
    """
    check_kind(cfg, "autoregressive", "autoregressive.generate")
    transformer.check_tokens(prompt, cfg, "prompt")
    prompt = jnp.asarray(prompt, jnp.int32)
    if gen_length <= 0:
        raise ValueError(f"gen_length must be positive, got {gen_length}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature > 0 and rng is None:
        raise ValueError("temperature > 0 samples: pass rng=jax.random.key(seed)")
    mask = (
        np.ones(prompt.shape, bool)
        if attention_mask is None
        else np.asarray(attention_mask).astype(bool)
    )
    if mask.shape != prompt.shape:
        raise ValueError(
            f"attention_mask shape {mask.shape} differs from prompt shape {tuple(prompt.shape)}"
        )
    if not mask[:, -1].all():
        raise ValueError(
            "prompts must be LEFT-padded for autoregressive decoding (the last "
            "column of attention_mask must be 1 in every row)"
        )
    return _generate(
        params,
        cfg,
        prompt,
        jnp.asarray(mask),
        rng if rng is not None else jax.random.key(0),
        gen_length=gen_length,
        temperature=float(temperature),
    )
