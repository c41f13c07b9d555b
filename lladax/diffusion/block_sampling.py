"""Block diffusion decoding (BD3-LM, LLaDA 2.x) with an exact KV cache and variable length.

A `ModelConfig.kind="block_diffusion"` model attends block-causally: a query sees the keys of its
own block and of every earlier block, blocks of `cfg.block_size` (bs) positions aligned from
canvas position 0 (left padding included), as in training. Decoding denoises one block at a time
given the final earlier blocks, so keys and values of a finished block never change and a KV
cache of them is EXACT (unlike LLaDA's Fast-dLLM caches, `fast_sampling`).

The canvas. P = prompt length, G = gen_length. The program works on N = ceil((P + G) / bs) · bs
positions: the prompt, then masks. The first decoded block is the one holding position P (its
prompt positions stay fixed: the prompt's last partial block is completed, never padded); the
blocks run to the end of the N positions and the returned canvas is cut to [B, P + G].

A block. Each block takes s = min(bs, max(1, ceil(steps · bs / G))) steps (steps=None: G, one
token per step), with LLaDA's linear transfer schedule and decisions (`denoise.commit_step`:
argmax / Gumbel temperature, low_confidence / random remasking, the EOS flags, CFG, and the
threshold / factor rules of fast decoding). A block ends once no live row has a mask left in it.

The cache. Every step of block b runs only the block's bs positions against the cache
(`transformer.apply(window, cache=, cache_start=)`). The final keys/values of a block are written
once, by the forward that first sees the block final: the next block's first step runs the query
window [block b-1 | block b] (logits of block b only) and returns the cache; the first decoded
block's first step runs the prompt's full blocks with it (one prefill). cache="none" runs the
uncached reference instead: every step a block-causal forward over the whole canvas, logits of
the block only; the two give the same tokens (tests/diffusion/test_block_sampling.py).

Variable length. With early exit (`SamplerConfig.early_exit`, on by default for this kind) a row
finishes at the end of the first block that leaves an EOS/EoT at a generated position (P <= p <
P + G): it runs no further step, its later positions come back as EOS, and once every row has
finished no further block runs. One compiled program per (shapes, static options): a
`lax.while_loop` over blocks around a `lax.while_loop` over steps; temperature, cfg_scale,
threshold, factor and the flags are traced.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lladax.config import ModelConfig
from lladax.diffusion import denoise
from lladax.diffusion.fast_sampling import evaluation_flops
from lladax.diffusion.sampler_config import SamplerConfig, StaticOptions
from lladax.model import transformer
from lladax.model.sharding import constrain


def layout(prompt_len: int, gen_length: int, block_size: int) -> tuple[int, int, int]:
    """(N, first, n_blocks): the canvas length N = ceil((P + G) / bs) · bs, the index of the
    first decoded block (the one holding position P) and the number of decoded blocks."""
    n_total = -(-(prompt_len + gen_length) // block_size)
    first = prompt_len // block_size
    return n_total * block_size, first, n_total - first


def steps_per_block(steps: int, gen_length: int, block_size: int) -> int:
    """s = min(bs, max(1, ceil(steps · bs / G))): the sampler's step budget spread over blocks."""
    return min(block_size, max(1, math.ceil(steps * block_size / gen_length)))


def check_block_length(cfg: ModelConfig, block_length: Any) -> None:
    """Block diffusion decodes the blocks it was trained on: block_length None or block_size."""
    if block_length is not None and block_length != cfg.block_size:
        raise ValueError(
            f"block_length={block_length} differs from the model's block_size={cfg.block_size}: "
            f"a block diffusion model decodes the blocks it was trained on, pass "
            f"block_length=None (or {cfg.block_size})"
        )


def _evaluators(params, cfg: ModelConfig, attn, fixed, dyn, o: StaticOptions, first_block: int):
    """(opening, later): block b's model evaluations, logits [B, bs, V] of its positions.

    opening(x, b, cache) -> (logits, cache): the first step; with a cache, the window [block b-1
    | block b] (or, for the first decoded block, every block up to it) is written into the cache,
    so the blocks before b hold their final keys/values. later(x, b, cache): the other steps, the
    block alone against that cache. cache None: the uncached reference, a block-causal forward
    over the whole canvas.
    """
    bs = cfg.block_size
    logits_of = functools.partial(
        denoise.guided_logits, params, cfg, attn=attn, guided=o.guided, dyn=dyn
    )

    def span(a, start, size):
        return jax.lax.dynamic_slice_in_dim(a, start, size, axis=1)

    def windowed(x, start, size, cache, **query):  # positions [start, start + size) of x
        x_w, fixed_w = span(x, start, size), span(fixed, start, size)
        return logits_of(x=x_w, fixed=fixed_w, cache=cache, cache_start=start, **query)

    def uncached(x, b):
        return logits_of(x=x, fixed=fixed, query_start=b * bs, query_size=bs)

    def opening(x, b, cache):
        if cache is None:
            return uncached(x, b), None
        query = dict(query_size=bs, return_cache=True)

        def prefill(_):  # the prompt's full blocks and block b: one forward from position 0
            n = (first_block + 1) * bs
            return windowed(x, 0, n, cache, query_start=first_block * bs, **query)

        def fold(_):  # block b-1, final now, and block b
            return windowed(x, (b - 1) * bs, 2 * bs, cache, query_start=bs, **query)

        return jax.lax.cond(b == first_block, prefill, fold, None)

    def later(x, b, cache):
        return uncached(x, b) if cache is None else windowed(x, b * bs, bs, cache)

    return opening, later


def _live_rows(x, b, done, cfg: ModelConfig):
    """[B]: rows not finished with a mask left in block b."""
    x_b = jax.lax.dynamic_slice_in_dim(x, b * cfg.block_size, cfg.block_size, axis=1)
    return ~done & (x_b == cfg.mask_token_id).any(axis=1)


def _decode_step(state, b, i, logits, *, first_block, s, rng, cfg: ModelConfig, dyn, o):
    """Step i of block b. state (x [B, N], done [B], nfe [B], m [B] masks at block start);
    logits(x) -> (logits [B, bs, V], aux). Counts an evaluation for every live row."""
    x, done, nfe, m = state
    live = _live_rows(x, b, done, cfg)
    out, aux = logits(x)
    key = None if rng is None else jax.random.fold_in(rng, (b - first_block) * s + i)
    x, m = denoise.commit_step(x, b * cfg.block_size, out, live, m, i, s, key, cfg, o, dyn)
    return (constrain(x, ("batch", None)), done, nfe + live, m), aux


def _constrain_cache(cache):
    if cache is None:
        return None
    spec = ("layers", "batch", "length", "act_heads", None)
    return transformer.KVCache(*(constrain(c, spec) for c in cache))


@functools.partial(jax.jit, static_argnames=("cfg", "o"))
def _run(params, canvas, attn, rng, dyn, *, cfg: ModelConfig, o: StaticOptions):
    """canvas [B, P + G] = prompt + G masks -> (canvas [B, P + G], stats); attn [B, P + G] or
    None. Blocks in a `lax.while_loop` while some row is unfinished; in each, the opening step
    and a `lax.while_loop` over the other steps while a live row has a mask in the block."""
    B, G, bs = canvas.shape[0], o.gen_length, cfg.block_size
    P = canvas.shape[1] - G
    N, first, n_blocks = layout(P, G, bs)
    s = steps_per_block(o.steps, G, bs)
    x = jnp.pad(canvas, ((0, 0), (0, N - P - G)), constant_values=cfg.mask_token_id)
    x = constrain(x, ("batch", None))
    attn = None if attn is None else jnp.pad(attn, ((0, 0), (0, N - P - G)), constant_values=1)
    opening, later = _evaluators(params, cfg, attn, x != cfg.mask_token_id, dyn, o, first)
    step_at = functools.partial(
        _decode_step, first_block=first, s=s, rng=rng, cfg=cfg, dyn=dyn, o=o
    )
    cache = None
    if o.cache != "none":
        shape = (cfg.n_layers, 2 * B if o.guided else B, N, cfg.n_kv_heads, cfg.head_dim)
        cache = transformer.KVCache(*(jnp.zeros(shape, cfg.compute_dtype) for _ in "kv"))

    def block(carry):
        x, done, nfe, b, evals, cache = carry
        state = (x, done, nfe, jnp.zeros((B,), jnp.int32))
        state, cache = step_at(state, b, 0, lambda x: opening(x, b, cache))
        cache = _constrain_cache(cache)

        def step(c):  # the cache is loop-invariant: read, never carried or copied
            state, i = c
            return step_at(state, b, i, lambda x: (later(x, b, cache), None))[0], i + 1

        def more(c):
            (x, done, *_), i = c
            return (i < s) & _live_rows(x, b, done, cfg).any()

        (x, done, nfe, _), i = jax.lax.while_loop(more, step, (state, jnp.int32(1)))
        stopped, _ = denoise.first_stop(x[:, : P + G], cfg, P)  # earlier blocks are final
        done = done | (stopped & dyn["early_exit"])
        return x, done, nfe, b + 1, evals.at[b - first].set(i), cache

    def unfinished(carry):
        return (carry[3] < first + n_blocks) & ~carry[1].all()

    zeros = jnp.zeros((B,), jnp.int32)
    init = (x, jnp.zeros((B,), bool), zeros, jnp.int32(first), jnp.zeros((n_blocks,), jnp.int32))
    x, done, nfe, _, evals, _ = jax.lax.while_loop(unfinished, block, (*init, cache))
    x = denoise.eos_fill_frozen(x[:, : P + G], done, cfg, P)
    has_stop, stop_at = denoise.first_stop(x, cfg, P)
    return x, {
        "nfe": nfe,
        "evaluations": evals.sum(),
        "block_evaluations": evals,
        "lengths": jnp.where(has_stop, stop_at - P, G),
        "finished_early": done & (stop_at // bs < first + n_blocks - 1),
    }


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
    """Block diffusion decoding of a prompt canvas [B, P + gen_length] (`denoise.prompt_canvas`;
    attn its [B, P + gen_length] mask or None): canvas, or (canvas, stats).

    `sampling.generate_with` calls this for a block-diffusion model with the sampler resolved
    for the kind (`SamplerConfig.for_kind`). sampler.block_length: None or cfg.block_size;
    sampler.cache "none": the uncached reference, anything else the exact cache. The prompt may
    not contain the mask id. stats: nfe [B] (model evaluations while the row was live),
    evaluations (batch evaluations run), block_evaluations [n_blocks] (per decoded block),
    lengths [B] (generated tokens before the first EOS/EoT, or gen_length), finished_early [B]
    (stopped before the last block). `model_flops(cfg, stats, ...)`: the compute spent.
    """
    check_block_length(cfg, sampler.block_length)
    prompt_len = canvas.shape[1] - sampler.gen_length
    if (np.asarray(canvas[:, :prompt_len]) == cfg.mask_token_id).any():
        raise ValueError(
            f"prompt contains mask_token_id={cfg.mask_token_id}: block diffusion only fills "
            "the generated blocks; drop the mask ids from the prompt"
        )
    sampler = dataclasses.replace(sampler, block_length=None)  # one program for both spellings
    x, stats = _run(
        params, canvas, attn, sampler.rng_for(rng), sampler.traced(), cfg=cfg, o=sampler.static()
    )
    return (x, stats) if return_stats else x


def model_flops(
    cfg: ModelConfig, stats: dict[str, Any], *, batch: int, canvas_len: int, guided: bool = False
) -> float:
    """Total model FLOPs of a cached block-diffusion run, from its per-block counts.

    canvas_len: P + gen_length. Block b's opening evaluation runs every block up to b (the first
    decoded block) or blocks b-1 and b (fresh keys/values), the other steps block b alone; every
    query sees the keys of blocks <= b. Every evaluation runs the whole batch (static shapes), so
    this is the compute spent, not the per-row NFE; CFG doubles the batch.
    """
    bs = cfg.block_size
    evals = [int(v) for v in np.asarray(stats["block_evaluations"])]
    first = -(-canvas_len // bs) - len(evals)
    total = 0.0
    for j, e in enumerate(evals):
        if e == 0:
            continue
        keys = (first + j + 1) * bs
        fresh = keys if j == 0 else 2 * bs
        total += evaluation_flops(cfg, keys=keys, fresh=fresh, queries=bs)
        total += (e - 1) * evaluation_flops(cfg, keys=keys, fresh=bs, queries=bs)
    return total * batch * (2 if guided else 1)


__all__ = ["check_block_length", "decode", "layout", "model_flops", "steps_per_block"]
