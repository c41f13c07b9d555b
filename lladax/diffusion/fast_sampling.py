"""Fast decoding (Fast-dLLM, reference.md §9): KV caches and confidence-threshold parallel commits.

`generate` keeps the semi-autoregressive block structure of `sampling.generate` and the same
per-step decision (`denoise.decide`: argmax / Gumbel-max, confidence, the EOS flags, CFG), and
changes two things, both approximations that trade exactness for speed:

  * cache="prefix" | "dual": the first step of each block runs the whole canvas and keeps every
    layer's keys/values (`transformer.apply(return_cache=True)`); the other steps of the block run
    only
    the block and what follows it ("prefix": the cache serves everything left of the block) or
    only the block ("dual": the cache also serves the masked suffix). Cached keys/values are stale
    once tokens change; they are refreshed at the next block start.
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

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lladax.config import ModelConfig, check_kind
from lladax.diffusion import denoise
from lladax.model import transformer
from lladax.model.sharding import constrain

CACHE_MODES = ("none", "prefix", "dual")


@dataclasses.dataclass(frozen=True)
class _FastOpts:
    """Static options: those of `sampling` plus the cache mode."""

    base: denoise.StepOptions
    cache: str


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


@functools.partial(jax.jit, static_argnames=("cfg", "o"))
def _run(
    params,
    canvas: jax.Array,
    attn: jax.Array | None,
    rng: jax.Array | None,
    dyn: dict[str, jax.Array],
    *,
    cfg: ModelConfig,
    o: _FastOpts,
):
    """canvas [B, N] = prompt + gen_length masks -> (canvas, stats); attn [B, N] or None."""
    base = o.base
    B, N = canvas.shape
    bl, n_blocks = base.block_length, base.gen_length // base.block_length
    P, s = N - base.gen_length, base.steps // n_blocks
    mask_id = cfg.mask_token_id
    fixed = canvas != mask_id
    logits_of = functools.partial(
        denoise.guided_logits, params, cfg, attn=attn, guided=base.guided, dyn=dyn
    )
    cache_shape = (cfg.n_layers, 2 * B if base.guided else B, N, cfg.n_kv_heads, cfg.head_dim)

    def evaluate_first(x, b):  # exact: the whole canvas (LM head on the block), -> logits, cache
        kw = dict(x=x, fixed=fixed, query_start=P + b * bl, query_size=bl)
        return (logits_of(**kw), None) if o.cache == "none" else logits_of(**kw, return_cache=True)

    def evaluate_later(x, b, cache):  # the block's other steps, against the block-start cache
        if o.cache == "none":
            return evaluate_first(x, b)[0]
        if o.cache == "dual":  # the block only; prefix and suffix from the cache
            start = P + b * bl
            x_w, fixed_w = (jax.lax.dynamic_slice_in_dim(a, start, bl, axis=1) for a in (x, fixed))
            return logits_of(x=x_w, fixed=fixed_w, cache=cache, cache_start=start)

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

        return jax.lax.switch(b, [functools.partial(prefix, j) for j in range(n_blocks)], x, cache)

    def live_rows(x, b, done):  # (live [B], done [B]): rows with work left in block b
        done = done | (denoise.answer_final(x, cfg, P) & dyn["early_exit"])
        x_w = jax.lax.dynamic_slice_in_dim(x, P + b * bl, bl, axis=1)
        return ~done & (x_w == mask_id).any(axis=1), done

    def decode_step(x, done, nfe, m, b, i, logits):
        """One step of block b given the logits function: commit, count NFE of live rows."""
        live, done = live_rows(x, b, done)
        logits, aux = logits(x)
        start = P + b * bl
        key = None if rng is None else jax.random.fold_in(rng, b * s + i)
        x0, conf = denoise.decide(logits, start + jnp.arange(bl), key, cfg, base, dyn)
        x_w = jax.lax.dynamic_slice_in_dim(x, start, bl, axis=1)
        eligible = (x_w == mask_id) & live[:, None]
        m = jnp.where(i == 0, eligible.sum(axis=1), m)  # masks at block start: the schedule
        k = jnp.maximum(denoise.step_budget(m, s, i), 1)
        conf = jnp.where(eligible, conf, -jnp.inf)
        rank = denoise.rank_by_confidence(conf)
        extra = (conf >= dyn["threshold"]) | (conf >= 1.0 - dyn["factor"] / (rank + 2.0))
        commit = eligible & ((rank < k[:, None]) | extra)
        x = jax.lax.dynamic_update_slice_in_dim(x, jnp.where(commit, x0, x_w), start, axis=1)
        return (constrain(x, ("batch", None)), done, nfe + live, m), aux

    def block(carry):
        x, done, nfe, b, evals = carry
        any_live = live_rows(x, b, done)[0].any()
        m0 = jnp.zeros((B,), jnp.int32)

        def first(_):  # refreshes the cache
            return decode_step(x, done, nfe, m0, b, 0, lambda x: evaluate_first(x, b))

        def skip(_):  # every row done: no forward
            zeros = None if o.cache == "none" else jnp.zeros(cache_shape, cfg.compute_dtype)
            return (x, done, nfe, m0), (
                None if zeros is None else transformer.KVCache(zeros, zeros)
            )

        state, cache = jax.lax.cond(any_live, first, skip, None)
        if cache is not None:
            cache = transformer.KVCache(
                *(constrain(c, ("layers", "batch", "length", "act_heads", None)) for c in cache)
            )

        def later(c):  # the cache is loop-invariant: read, never carried or copied
            state, i = c
            state, _ = decode_step(*state, b, i, lambda x: (evaluate_later(x, b, cache), None))
            return state, i + 1

        def more(c):
            (x, done, *_), i = c
            return (i < s) & live_rows(x, b, done)[0].any()

        (x, done, nfe, _), i = jax.lax.while_loop(more, later, (state, jnp.int32(1)))
        return x, done, nfe, b + 1, evals.at[b].set(jnp.where(any_live, i, 0))

    init = (
        constrain(canvas, ("batch", None)),
        jnp.zeros((B,), bool),
        jnp.zeros((B,), jnp.int32),
        jnp.int32(0),
        jnp.zeros((n_blocks,), jnp.int32),
    )
    x, done, nfe, _, evals = jax.lax.while_loop(lambda c: c[3] < n_blocks, block, init)
    x = denoise.eos_fill_frozen(x, done, cfg, P)
    return x, {
        "nfe": nfe,
        "evaluations": evals.sum(),
        "block_evaluations": evals,
        "finished_early": done,
    }


def _check_fast(
    prompt: np.ndarray,
    cfg: ModelConfig,
    *,
    cache: str,
    threshold: float | None,
    factor: float | None,
) -> None:
    """One-line ValueErrors, each naming the fix, for the fast-decoding options."""
    if cache not in CACHE_MODES:
        raise ValueError(f"unknown cache mode {cache!r}: use one of {CACHE_MODES}")
    if threshold is not None and factor is not None:
        raise ValueError(
            "pass threshold or factor, not both (factor replaces the fixed "
            "threshold by Fast-dLLM's rank-dependent one)"
        )
    if threshold is not None and not (isinstance(threshold, int | float) and threshold >= 0):
        raise ValueError(
            f"threshold={threshold!r} must be a number >= 0 (e.g. 0.9; above 1 "
            "never commits extra tokens)"
        )
    if factor is not None and not (isinstance(factor, int | float) and factor > 0):
        raise ValueError(f"factor={factor!r} must be a number > 0 (e.g. 1.0)")
    if (prompt == cfg.mask_token_id).any():
        raise ValueError(
            f"prompt contains mask_token_id={cfg.mask_token_id}: fast decoding "
            "only fills the generated blocks; use sampling.infill for inner masks"
        )


def generate(
    params,
    cfg: ModelConfig,
    prompt: Any,
    attention_mask: Any = None,
    *,
    gen_length: int,
    block_length: int,
    steps: int | None = None,
    cache: str = "dual",
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

    Options shared with `sampling.generate` mean the same; `steps` (default gen_length: one
    token per step) sets the per-block schedule, which is also the most steps a block takes.
    cache: "none" (exact), "prefix" or "dual" (stale keys/values within a block);
    threshold: also commit every in-block mask with confidence ≥ threshold (Fast-dLLM: 0.9);
    factor: Fast-dLLM's factor rule instead (rank n commits if (n + 1)(1 − c_n) < factor).
    With cache="none" and neither threshold nor factor (or a threshold > 1) the output equals
    `sampling.generate`'s. The prompt may not contain the mask id (use `sampling.infill`).

    return_stats=True adds a dict: nfe [B] (model evaluations while the row had work left: the
    number of function evaluations of the paper), evaluations (batch evaluations run),
    block_evaluations [n_blocks], finished_early [B] (frozen by early exit). Use
    `model_flops(cfg, stats, ...)` for the compute spent.
    """
    check_kind(cfg, "diffusion", "fast_sampling.generate")
    prompt_np = np.asarray(prompt)
    if prompt_np.ndim != 2 or prompt_np.shape[0] == 0 or prompt_np.shape[1] == 0:
        raise ValueError(
            f"prompt must be a non-empty [batch, prompt_len] array of token ids, got "
            f"shape {tuple(prompt_np.shape)}: pass at least one token (e.g. BOS)"
        )
    transformer.check_tokens(prompt_np, cfg, "prompt")
    steps = gen_length if steps is None else steps
    denoise.check_options(
        steps=steps,
        gen_length=gen_length,
        block_length=block_length,
        remasking=remasking,
        cfg_scale=cfg_scale,
        temperature=temperature,
        rng=rng,
    )
    _check_fast(prompt_np, cfg, cache=cache, threshold=threshold, factor=factor)
    B, P = prompt_np.shape
    if attention_mask is not None:
        if tuple(np.shape(attention_mask)) != (B, P):
            raise ValueError(
                f"attention_mask shape {tuple(np.shape(attention_mask))} != prompt "
                f"shape {(B, P)}: pass one 0/1 entry per prompt token"
            )
        attention_mask = jnp.concatenate(
            [jnp.asarray(attention_mask, jnp.int32), jnp.ones((B, gen_length), jnp.int32)], axis=1
        )
    needs_rng = temperature > 0 or remasking == "random"
    base = denoise.StepOptions(
        steps=int(steps),
        gen_length=int(gen_length),
        block_length=int(block_length),
        sample=temperature > 0,
        guided=cfg_scale > 0,
        remasking=remasking,
        return_history=False,
        use_window=True,
    )
    dyn = {
        "temperature": jnp.float32(temperature),
        "cfg_scale": jnp.float32(cfg_scale),
        "logits_eos_inf": jnp.bool_(logits_eos_inf),
        "confidence_eos_eot_inf": jnp.bool_(confidence_eos_eot_inf),
        "early_exit": jnp.bool_(early_exit),
        "logits_mask_inf": jnp.bool_(False),
        # disabled rules compare against +inf: nothing passes
        "threshold": jnp.float32(np.inf if threshold is None else threshold),
        "factor": jnp.float32(-np.inf if factor is None else factor),
    }
    canvas = jnp.concatenate(
        [jnp.asarray(prompt, jnp.int32), jnp.full((B, gen_length), cfg.mask_token_id, jnp.int32)],
        axis=1,
    )
    x, stats = _run(
        params,
        canvas,
        attention_mask,
        rng if needs_rng else None,
        dyn,
        cfg=cfg,
        o=_FastOpts(base=base, cache=cache),
    )
    return (x, stats) if return_stats else x
