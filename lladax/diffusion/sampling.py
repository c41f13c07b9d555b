"""Reverse diffusion: LLaDA's semi-autoregressive low-confidence remasking sampler.

`generate` reproduces upstream `generate.py` token for token (reference.md §4, golden README) as
ONE jitted program per (shape, static options): a `lax.scan` over all global steps with the block
index computed inside — no Python loop, no per-step dispatch. Each step does less work than the
reference, exactly, by one `lax.switch`:
  * window: when no row has a mask LEFT of the current block (the normal case) only the block can
    change, so the last layer and LM head run on its positions only
    (`transformer.apply(query_size=)`);
  * full: otherwise (prompt masks, leftovers of earlier blocks) the whole canvas, as upstream;
  * skip: a step that cannot commit anything (zero budget for every live row) runs no forward.
`early_exit=True` also freezes a row once its answer is final (an EOS/EoT with no mask before it)
and skips the forward once every row is frozen. Temperature, cfg_scale and the flags are traced,
so they share one program. Noise is drawn per (step, canvas position) with `fold_in`, so the
window and full paths see the same noise and skipped steps shift nothing. `infill` runs the same
program over a canvas whose masks sit anywhere. What one step decides (proposal, confidence,
guidance, early exit) is `lladax.diffusion.denoise`, shared with `fast_sampling`. The options are
a `SamplerConfig` (`generate_with` takes one; `generate` builds one from its keywords), split
into the program's static options and its traced scalars. A block-diffusion model
(`ModelConfig.kind="block_diffusion"`) takes the same entry points and runs
`block_sampling` (exact KV cache, variable length).
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lladax.config import ModelConfig, check_kind
from lladax.diffusion import autoregressive, block_sampling, fast_sampling
from lladax.diffusion.denoise import (
    answer_final,
    decide,
    eos_fill_frozen,
    guided_logits,
    gumbel_noise,
    prompt_canvas,
    rank_by_confidence,
    step_budget,
    transfer_schedule,
)
from lladax.diffusion.sampler_config import SamplerConfig, StaticOptions
from lladax.model import transformer
from lladax.model.sharding import constrain

REMASKING = SamplerConfig.REMASKING  # the choices, exported where the design card has them


def _proposals(params, x, attn, fixed, key, dyn, branch, block_start, *, cfg, o: StaticOptions):
    """One step's proposals x0 [B, N] and confidences conf [B, N] (−inf where none is made), by
    `branch`: 0 skip (no forward), 1 the block window (last layer and LM head on the block's
    positions only), 2 the whole canvas (with o.window False: 0 skip, else the whole canvas)."""
    B, N = x.shape

    def skip(_):
        return x, jnp.full((B, N), -jnp.inf, jnp.float32)

    def window(_):
        logits = guided_logits(
            params,
            cfg,
            x,
            attn,
            fixed,
            o.guided,
            dyn,
            query_start=block_start,
            query_size=o.block_length,
        )
        x0_w, conf_w = decide(logits, block_start + jnp.arange(o.block_length), key, cfg, o, dyn)
        x0 = jax.lax.dynamic_update_slice(x, x0_w, (0, block_start))
        conf = jax.lax.dynamic_update_slice(skip(None)[1], conf_w, (0, block_start))
        return x0, conf

    def full(_):
        logits = guided_logits(params, cfg, x, attn, fixed, o.guided, dyn)
        return decide(logits, jnp.arange(N), key, cfg, o, dyn)

    if not o.window:  # the smaller program: no window branch to compile
        return jax.lax.cond(branch > 0, full, skip, None)
    return jax.lax.switch(branch, [skip, window, full], None)


def _step(carry, g, *, params, attn, rng, dyn, fixed, cfg, o: StaticOptions):
    """Global step g of the scan: the block's schedule, early exit, proposals, commits.

    carry: canvas x [B, N], masks at block start m [B], done [B], done_at [B], forwards and
    window forwards run (scalars).
    """
    x, m, done, done_at, n_fwd, n_win = carry
    N = x.shape[1]
    P, s = N - o.gen_length, o.steps // (o.gen_length // o.block_length)
    b, i = g // s, g % s
    block_start = P + b * o.block_length
    block_end = block_start + o.block_length
    pos = jnp.arange(N)
    masked = x == cfg.mask_token_id
    in_block = (pos[None, :] >= block_start) & (pos[None, :] < block_end)
    m = jnp.where(i == 0, (masked & in_block).sum(axis=1), m)  # masks at block start
    newly = answer_final(x, cfg, P) & ~done & dyn["early_exit"]
    done_at = jnp.where(newly, g, done_at)
    done = done | newly
    k = jnp.where(done, 0, step_budget(m, s, i).astype(jnp.int32))
    key = None if rng is None else jax.random.fold_in(rng, g)

    # window when no live row has a mask left of the block; skip when nothing can be committed
    active = ((k > 0) & ~done).any()
    left_clear = (~(masked & (pos[None, :] < block_start)).any(axis=1) | done).all()
    window = left_clear & o.window
    branch = jnp.where(active, jnp.where(window, 1, 2), 0)
    x0, conf = _proposals(params, x, attn, fixed, key, dyn, branch, block_start, cfg=cfg, o=o)
    n_fwd = n_fwd + active.astype(jnp.int32)
    n_win = n_win + (active & window).astype(jnp.int32)

    eligible = masked & (pos[None, :] < block_end) & ~done[:, None]
    conf = jnp.where(eligible, conf, -jnp.inf)
    x0 = jnp.where(masked, x0, x)
    commit = (rank_by_confidence(conf) < k[:, None]) & eligible
    x = constrain(jnp.where(commit, x0, x), ("batch", None))
    return (x, m, done, done_at, n_fwd, n_win), (x if o.return_history else None)


@functools.partial(jax.jit, static_argnames=("cfg", "o"))
def _run(params, canvas, attn, rng, dyn, *, cfg: ModelConfig, o: StaticOptions):
    """The whole sampler as one program: a `lax.scan` over the global steps.

    canvas [B, N] int32: the prompt followed by `o.gen_length` positions that the blocks cover
    (all masks for `generate`; text with mask spans for `infill`); attn [B, N] or None.
    """
    B = canvas.shape[0]
    x = constrain(canvas, ("batch", None))
    fixed = x != cfg.mask_token_id  # pads and prompt tokens are fixed, prompt masks are not
    step = functools.partial(
        _step, params=params, attn=attn, rng=rng, dyn=dyn, fixed=fixed, cfg=cfg, o=o
    )
    init = (
        x,
        jnp.zeros((B,), jnp.int32),
        jnp.zeros((B,), bool),
        jnp.full((B,), o.steps, jnp.int32),
        jnp.int32(0),
        jnp.int32(0),
    )
    (x, _, done, done_at, n_fwd, n_win), history = jax.lax.scan(step, init, jnp.arange(o.steps))
    x = eos_fill_frozen(x, done, cfg, canvas.shape[1] - o.gen_length)
    stats = {
        "forward_passes": n_fwd,
        "window_passes": n_win,
        "steps": jnp.int32(o.steps),
        "steps_saved": jnp.int32(o.steps) - n_fwd,
        "done_step": done_at,
    }
    return x, history, stats


def generate(
    params,
    cfg: ModelConfig,
    prompt: Any,
    attention_mask: Any = None,
    *,
    steps: int,
    gen_length: int,
    block_length: int,
    temperature: float = 0.0,
    cfg_scale: float = 0.0,
    remasking: str = "low_confidence",
    logits_eos_inf: bool = False,
    confidence_eos_eot_inf: bool = False,
    rng: jax.Array | None = None,
    return_history: bool = False,
    early_exit: bool | None = None,
    return_stats: bool = False,
    threshold: float | None = None,
    factor: float | None = None,
    cache: str | None = None,
):
    """LLaDA sampling (upstream `generate.py`): prompt [B, P] -> canvas [B, P + gen_length] int32.

    The options are `SamplerConfig`'s (documented there); this is `generate_with` on
    `SamplerConfig(steps=..., gen_length=..., ...)`. attention_mask [B, P]: 1 = real token,
    left padding = 0 (None: all ones). `rng` (a `jax.random` key) is required when sampling is
    random; every row gets independent noise. return_history / return_stats: see `generate_with`.
    A block-diffusion model decodes its own blocks (`block_sampling`): block_length None or
    cfg.block_size, any gen_length and steps (None: one token per step).
    """
    arguments = dict(locals())  # first line: the arguments
    if cfg.kind == "block_diffusion":  # its blocks need not tile gen_length: the model's own
        block_sampling.check_block_length(cfg, block_length)
        arguments["block_length"] = None
    sampler = SamplerConfig.from_arguments(arguments)
    return generate_with(
        params,
        cfg,
        prompt,
        attention_mask,
        sampler,
        rng,
        return_history=return_history,
        return_stats=return_stats,
    )


def generate_with(
    params,
    cfg: ModelConfig,
    prompt: Any,
    attention_mask: Any,
    sampler: SamplerConfig,
    rng: jax.Array | None = None,
    *,
    return_history: bool = False,
    return_stats: bool = False,
    window: bool = True,
):
    """`generate` with its options as a `SamplerConfig`: canvas [B, P + gen_length] int32.

    The sampler is resolved for the model's kind (`SamplerConfig.for_kind`: early_exit None is
    the kind's default). A block-diffusion model runs `block_sampling.decode` (its stats; no
    history). A fast `sampler` (`cache` set) runs `fast_sampling.decode` (its stats; no
    history); otherwise the exact sampler below. return_history=True adds history [steps, B,
    P + gen_length] (the canvas after each global step; with early exit it shows a frozen row's
    tail as masks, the canvas as EOS).
    return_stats=True appends a dict: forward_passes, window_passes (forwards that took the
    block-window path), steps, steps_saved (scalars), done_step [B] (the step at which each row
    froze; `steps` if never). window=False runs every forward on the whole canvas (same tokens).
    Returns canvas, (canvas, history), (canvas, stats) or (canvas, history, stats).
    """
    check_kind(cfg, ("diffusion", "block_diffusion"), "sampling.generate")
    sampler = sampler.for_kind(cfg.kind)
    block = cfg.kind == "block_diffusion"
    if (sampler.fast or block) and return_history:
        what = "block diffusion" if block else f"fast decoding (cache={sampler.cache!r})"
        raise ValueError(
            f"return_history shows the exact sampler's canvas at every step; {what} keeps "
            f"none: drop return_history{'' if block else ', or set cache=None'}"
        )
    canvas, attn = prompt_canvas(cfg, prompt, attention_mask, sampler.gen_length)
    if canvas.shape[1] > cfg.max_seq_len:
        P = canvas.shape[1] - sampler.gen_length
        warnings.warn(
            f"canvas length {canvas.shape[1]} (prompt {P} + gen_length {sampler.gen_length}) "
            f"exceeds the model's max_seq_len {cfg.max_seq_len}: quality may degrade "
            "beyond the trained context",
            stacklevel=2,
        )
    if block:
        return block_sampling.decode(
            params, cfg, canvas, attn, sampler, rng, return_stats=return_stats
        )
    if sampler.fast:
        return fast_sampling.decode(
            params, cfg, canvas, attn, sampler, rng, return_stats=return_stats
        )
    o = sampler.static(return_history=return_history, window=window)
    x, history, stats = _run(
        params, canvas, attn, sampler.rng_for(rng), sampler.traced(), cfg=cfg, o=o
    )
    out: tuple = (x,)
    if return_history:
        out += (history,)
    if return_stats:
        out += (stats,)
    return out[0] if len(out) == 1 else out


def generate_any(
    params,
    cfg: ModelConfig,
    prompt: Any,
    attention_mask: Any,
    sampler: SamplerConfig,
    rng: jax.Array | None = None,
    *,
    return_history: bool = False,
    return_stats: bool = False,
):
    """Decode with the sampler of the model's kind: `generate_with` for LLaDA (exact or fast)
    and block diffusion, left to right (`autoregressive.generate`: gen_length, temperature and
    rng only; its stats: forward_passes = gen_length) for the autoregressive baseline. The
    entry point of callers that serve any checkpoint (`lladax sample`, `lladax serve`)."""
    if not cfg.causal:
        return generate_with(
            params,
            cfg,
            prompt,
            attention_mask,
            sampler,
            rng,
            return_history=return_history,
            return_stats=return_stats,
        )
    if return_history:
        raise ValueError("return_history is the diffusion samplers' canvas per step: drop it")
    out = autoregressive.generate(
        params,
        cfg,
        prompt,
        attention_mask,
        gen_length=sampler.gen_length,
        temperature=sampler.temperature,
        rng=rng,
    )
    return (out, {"forward_passes": jnp.int32(sampler.gen_length)}) if return_stats else out


def infill(
    params,
    cfg: ModelConfig,
    canvas: Any,
    attention_mask: Any = None,
    *,
    steps: int,
    block_length: int | None = None,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    rng: jax.Array | None = None,
    return_history: bool = False,
):
    """Fill every mask id inside canvas [B, N] with the same reverse process as `generate`.

    The whole canvas is one block (or blocks of `block_length` from the left, semi-AR); the
    schedule spreads each row's mask count over `steps`; text outside the masks never changes.
    Unlike the reference `generate`, the mask id itself is never proposed, so every span is
    filled. Returns the canvas [B, N] (and history [steps, B, N] with return_history).
    """
    check_kind(cfg, "diffusion", "sampling.infill")
    canvas_np = np.asarray(canvas)
    if canvas_np.ndim != 2 or canvas_np.size == 0:
        raise ValueError(
            f"canvas must be a non-empty [batch, len] array of token ids, got shape "
            f"{tuple(canvas_np.shape)}"
        )
    transformer.check_tokens(canvas_np, cfg, "canvas")
    if not (canvas_np == cfg.mask_token_id).any(axis=1).all():
        raise ValueError(
            "every canvas row needs at least one mask id to fill: mark the spans "
            f"with mask_token_id={cfg.mask_token_id}"
        )
    B, N = canvas_np.shape
    sampler = SamplerConfig(
        gen_length=N,
        steps=steps,
        block_length=block_length,
        temperature=temperature,
        remasking=remasking,
    )
    if attention_mask is not None and tuple(np.shape(attention_mask)) != (B, N):
        raise ValueError(
            f"attention_mask shape {tuple(np.shape(attention_mask))} != canvas shape "
            f"{(B, N)}: pass one 0/1 entry per token"
        )
    x, history, _ = _run(
        params,
        jnp.asarray(canvas_np, jnp.int32),
        None if attention_mask is None else jnp.asarray(attention_mask, jnp.int32),
        sampler.rng_for(rng),
        sampler.traced(fill_masks=True),
        cfg=cfg,
        o=sampler.static(return_history=return_history),
    )
    return (x, history) if return_history else x


def decode_answer(canvas_row: Any, prompt_len: int, cfg: ModelConfig) -> list[int]:
    """The generated ids of one canvas row [P + G]: after the prompt, cut before the first EOS/EoT.

    Mask ids left undecoded (possible when the model predicts the mask id) are kept as they are.
    """
    gen = [int(t) for t in np.asarray(canvas_row)[prompt_len:]]
    stops = {cfg.eos_token_id} | ({cfg.eot_token_id} if cfg.eot_token_id is not None else set())
    for j, t in enumerate(gen):
        if t in stops:
            return gen[:j]
    return gen


# The schedule, noise and remasking rules are defined in `denoise` and exported here too, where
# the design card's module map puts them.
__all__ = [
    "REMASKING",
    "decode_answer",
    "generate",
    "generate_any",
    "generate_with",
    "gumbel_noise",
    "infill",
    "transfer_schedule",
]
