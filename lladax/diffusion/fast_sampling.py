"""Fast decoding (Fast-dLLM, reference.md §9): KV caches and confidence-threshold parallel commits.

`generate` keeps the semi-autoregressive block structure of `sampling.generate` and the same
per-step decision (`denoise.decide`: argmax / Gumbel-max, confidence, the EOS flags, CFG), and
changes two things, both approximations that trade exactness for speed:

  * cache="prefix" | "dual": the first step of each block runs the whole canvas and keeps every
    layer's keys/values (`transformer.apply(return_cache=True)`); the other steps of the block run
    only the block and what follows it ("prefix": the cache serves everything left of the block)
    or only the block ("dual": the cache also serves the masked suffix). Cached keys/values are
    stale once tokens change; they are refreshed at the next block start.
  * threshold / factor: a step commits, besides the schedule's top-k of `generate` (k ≥ 1), every
    masked token of the block whose confidence is ≥ threshold, or (factor rule) every rank n
    (1-based) with (n + 1)(1 − c_n) < factor; a block ends as soon as it has no mask left.

One compiled program per (shapes, static options) runs everything: a `lax.while_loop` over blocks,
inside it a `lax.while_loop` over steps with a per-row "live" mask (rows finish their block, and
with early exit their answer, independently; a finished row commits nothing and counts no more
evaluations). Shapes are static: the dual step is a [batch, block] query against a full-length
cache; the prefix step's query length is fixed per block (one `lax.switch` branch per block).
Threshold, factor, temperature, cfg_scale and the flags are traced: changing them reuses the
program. Noise is keyed per (global step b·s + i, position) as in `generate`, so with cache="none"
and no threshold/factor the result is `generate`'s token for token.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lladax.config import ModelConfig, check_kind
from lladax.diffusion import denoise
from lladax.diffusion.sampler_config import SamplerConfig, StaticOptions
from lladax.model import transformer
from lladax.model.sharding import constrain

CACHE_MODES = SamplerConfig.CACHE_MODES  # the choices, exported beside the sampler


def evaluation_flops(cfg: ModelConfig, *, keys: int, fresh: int, queries: int) -> float:
    """Matmul FLOPs of one model evaluation of one row.

    `fresh` positions run through every layer (their keys/values computed), attending to `keys`
    keys (the rest come from the cache); the last layer's queries/MLP and the LM head only run
    for `queries` rows. fresh == keys is an uncached forward: `cfg.forward_flops(keys, queries)`;
    cached keys only add attention work (scores and weighted values, 4·d per query-key pair).
    """
    cached = keys - fresh
    return cfg.forward_flops(fresh, queries) + 4 * cfg.d_model * cached * (
        (cfg.n_layers - 1) * fresh + queries
    )


def model_flops(
    cfg: ModelConfig,
    stats: dict[str, Any],
    *,
    batch: int,
    canvas_len: int,
    block_length: int,
    cache: str,
    guided: bool = False,
) -> float:
    """Total model FLOPs of a `generate(..., return_stats=True)` run, from its per-block counts.

    Every evaluation runs the whole batch (static shapes), so this is the compute spent, not
    the per-row NFE; CFG doubles the batch.
    """
    evals = np.asarray(stats["block_evaluations"])
    gen = block_length * len(evals)
    full = evaluation_flops(cfg, keys=canvas_len, fresh=canvas_len, queries=block_length)
    total = 0.0
    for b, e in enumerate(int(v) for v in evals):
        if cache == "none" or e == 0:
            total += e * full
            continue
        fresh = (
            canvas_len - (canvas_len - gen + b * block_length)
            if cache == "prefix"
            else block_length
        )
        total += full + (e - 1) * evaluation_flops(
            cfg, keys=canvas_len, fresh=fresh, queries=block_length
        )
    return total * batch * (2 if guided else 1)


def _evaluators(params, cfg: ModelConfig, attn, fixed, dyn, o: StaticOptions):
    """(first, later): the model evaluations of block b's steps, logits [B, block_length, V].

    first(x, b) runs the whole canvas (exact; LM head on the block) -> (logits, cache or None);
    later(x, b, cache) the block's other steps: against the block-start cache, the block and
    everything right of it ("prefix") or the block only ("dual"); uncached: first's logits.
    """
    N = fixed.shape[1]
    bl, n_blocks = o.block_length, o.gen_length // o.block_length
    P = N - o.gen_length
    logits_of = functools.partial(
        denoise.guided_logits, params, cfg, attn=attn, guided=o.guided, dyn=dyn
    )

    def first(x, b):
        kw = dict(x=x, fixed=fixed, query_start=P + b * bl, query_size=bl)
        return (logits_of(**kw), None) if o.cache == "none" else logits_of(**kw, return_cache=True)

    def prefix(j, x, cache):  # block j and all right of it: a static length per block
        start = P + j * bl
        return logits_of(
            x=x[:, start:],
            fixed=fixed[:, start:],
            cache=cache,
            cache_start=start,
            query_start=0,
            query_size=bl,
        )

    def later(x, b, cache):
        if o.cache == "none":
            return first(x, b)[0]
        if o.cache == "dual":  # the block only; prefix and suffix from the cache
            start = P + b * bl
            x_w, fixed_w = (jax.lax.dynamic_slice_in_dim(a, start, bl, axis=1) for a in (x, fixed))
            return logits_of(x=x_w, fixed=fixed_w, cache=cache, cache_start=start)
        return jax.lax.switch(b, [functools.partial(prefix, j) for j in range(n_blocks)], x, cache)

    return first, later


def _live_rows(x, b, done, *, cfg: ModelConfig, dyn, o: StaticOptions):
    """(live [B], done [B]): rows with work left in block b (early exit freezes finished rows)."""
    P = x.shape[1] - o.gen_length
    done = done | (denoise.answer_final(x, cfg, P) & dyn["early_exit"])
    x_w = jax.lax.dynamic_slice_in_dim(x, P + b * o.block_length, o.block_length, axis=1)
    return ~done & (x_w == cfg.mask_token_id).any(axis=1), done


def _decode_step(state, b, i, logits, *, rng, cfg: ModelConfig, dyn, o: StaticOptions):
    """Step i of block b: the schedule's top-k (k >= 1) plus the threshold / factor commits.

    state (x [B, N], done [B], nfe [B], m [B] masks at block start); logits(x) -> (logits
    [B, block, V], aux). Counts an evaluation for every live row. -> (state, aux).
    """
    x, done, nfe, m = state
    live, done = _live_rows(x, b, done, cfg=cfg, dyn=dyn, o=o)
    logits, aux = logits(x)
    s = o.steps // (o.gen_length // o.block_length)
    start = x.shape[1] - o.gen_length + b * o.block_length
    key = None if rng is None else jax.random.fold_in(rng, b * s + i)
    x, m = denoise.commit_step(x, start, logits, live, m, i, s, key, cfg, o, dyn)
    return (constrain(x, ("batch", None)), done, nfe + live, m), aux


@functools.partial(jax.jit, static_argnames=("cfg", "o"))
def _run(params, canvas, attn, rng, dyn, *, cfg: ModelConfig, o: StaticOptions):
    """canvas [B, N] = prompt + gen_length masks -> (canvas, stats); attn [B, N] or None.

    A `lax.while_loop` over blocks; in each, the block-start step (which refreshes the cache)
    and a `lax.while_loop` over the other steps while a row has work left.
    """
    B, N = canvas.shape
    n_blocks, s = o.gen_length // o.block_length, o.steps // (o.gen_length // o.block_length)
    first, later = _evaluators(params, cfg, attn, canvas != cfg.mask_token_id, dyn, o)
    live_rows = functools.partial(_live_rows, cfg=cfg, dyn=dyn, o=o)
    decode_step = functools.partial(_decode_step, rng=rng, cfg=cfg, dyn=dyn, o=o)
    cache_shape = (cfg.n_layers, 2 * B if o.guided else B, N, cfg.n_kv_heads, cfg.head_dim)

    def block(carry):
        x, done, nfe, b, evals = carry
        any_live = live_rows(x, b, done)[0].any()
        state = (x, done, nfe, jnp.zeros((B,), jnp.int32))

        def skip(_):  # every row done: no forward
            zeros = None if o.cache == "none" else jnp.zeros(cache_shape, cfg.compute_dtype)
            return state, (None if zeros is None else transformer.KVCache(zeros, zeros))

        state, cache = jax.lax.cond(
            any_live, lambda _: decode_step(state, b, 0, lambda x: first(x, b)), skip, None
        )
        if cache is not None:
            cache = transformer.KVCache(
                *(constrain(c, ("layers", "batch", "length", "act_heads", None)) for c in cache)
            )

        def step(c):  # the cache is loop-invariant: read, never carried or copied
            state, i = c
            return decode_step(state, b, i, lambda x: (later(x, b, cache), None))[0], i + 1

        def more(c):
            (x, done, *_), i = c
            return (i < s) & live_rows(x, b, done)[0].any()

        (x, done, nfe, _), i = jax.lax.while_loop(more, step, (state, jnp.int32(1)))
        return x, done, nfe, b + 1, evals.at[b].set(jnp.where(any_live, i, 0))

    init = (
        constrain(canvas, ("batch", None)),
        jnp.zeros((B,), bool),
        jnp.zeros((B,), jnp.int32),
        jnp.int32(0),
        jnp.zeros((n_blocks,), jnp.int32),
    )
    x, done, nfe, _, evals = jax.lax.while_loop(lambda c: c[3] < n_blocks, block, init)
    x = denoise.eos_fill_frozen(x, done, cfg, N - o.gen_length)
    return x, {
        "nfe": nfe,
        "evaluations": evals.sum(),
        "block_evaluations": evals,
        "finished_early": done,
    }


def generate(
    params,
    cfg: ModelConfig,
    prompt: Any,
    attention_mask: Any = None,
    *,
    gen_length: int,
    block_length: int,
    steps: int | None = None,
    cache: str = SamplerConfig.FAST_CACHE,
    threshold: float | None = None,
    factor: float | None = None,
    temperature: float = 0.0,
    cfg_scale: float = 0.0,
    remasking: str = "low_confidence",
    logits_eos_inf: bool = False,
    confidence_eos_eot_inf: bool = False,
    early_exit: bool = False,
    rng: jax.Array | None = None,
    return_stats: bool = False,
):
    """Fast LLaDA sampling: prompt [B, P] -> canvas [B, P + gen_length] int32 (and stats).

    The options are `SamplerConfig`'s (documented there); this is `sampling.generate_with` on
    `SamplerConfig(cache=cache, ...)`. With cache="none" and neither threshold nor factor (or a
    threshold > 1) the output equals `sampling.generate`'s.
    """
    sampler = SamplerConfig.from_arguments(locals())  # first line: locals() = the arguments
    check_kind(cfg, "diffusion", "fast_sampling.generate")
    canvas, attn = denoise.prompt_canvas(cfg, prompt, attention_mask, sampler.gen_length)
    return decode(params, cfg, canvas, attn, sampler, rng, return_stats=return_stats)


def decode(
    params,
    cfg: ModelConfig,
    canvas: jax.Array,
    attn: jax.Array | None,
    sampler: SamplerConfig,
    rng: jax.Array | None,
    *,
    return_stats: bool = False,
):
    """Fast decoding of a prompt canvas [B, P + gen_length] (`denoise.prompt_canvas`; attn its
    [B, P + gen_length] mask or None) with `sampler.cache` set: canvas, or (canvas, stats).

    `sampling.generate_with` calls this for a fast `SamplerConfig`. The prompt may not contain
    the mask id (use `sampling.infill`). stats: nfe [B] (model evaluations while the row had
    work left: the paper's number of function evaluations), evaluations (batch evaluations run),
    block_evaluations [n_blocks], finished_early [B] (frozen by early exit).
    `model_flops(cfg, stats, ...)`: the compute spent.
    """
    if sampler.cache is None:
        raise ValueError(
            f"unknown cache mode None: use one of {CACHE_MODES} (cache=None is the exact "
            "sampler: sampling.generate_with)"
        )
    prompt_len = canvas.shape[1] - sampler.gen_length
    if (np.asarray(canvas[:, :prompt_len]) == cfg.mask_token_id).any():
        raise ValueError(
            f"prompt contains mask_token_id={cfg.mask_token_id}: fast decoding "
            "only fills the generated blocks; use sampling.infill for inner masks"
        )
    x, stats = _run(
        params, canvas, attn, sampler.rng_for(rng), sampler.traced(), cfg=cfg, o=sampler.static()
    )
    return (x, stats) if return_stats else x
