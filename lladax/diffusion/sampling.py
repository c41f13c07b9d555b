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
guidance, early exit) is `lladax.diffusion.denoise`, shared with `fast_sampling`.
"""

from __future__ import annotations

import collections
import functools
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lladax.config import ModelConfig, check_kind
from lladax.diffusion.denoise import (
    REMASKING,
    StepOptions,
    answer_final,
    check_options,
    decide,
    eos_fill_frozen,
    guided_logits,
    gumbel_noise,
    rank_by_confidence,
    step_budget,
    transfer_schedule,
)
from lladax.model import transformer
from lladax.model.sharding import constrain

# Number of times the jitted sampler was traced (= compiled), per static option set; tests use it.
TRACE_COUNT: collections.Counter = collections.Counter()
# Internal switch (tests flip it): False forces the full-canvas logits path on every step.
_USE_WINDOW = True


@functools.partial(jax.jit, static_argnames=("cfg", "o"))
def _run(
    params,
    canvas: jax.Array,
    attn: jax.Array | None,
    rng: jax.Array | None,
    dyn: dict[str, jax.Array],
    *,
    cfg: ModelConfig,
    o: StepOptions,
):
    """The whole sampler as one program.

    canvas [B, N] int32: the prompt followed by `o.gen_length` positions that the blocks cover
    (all masks for `generate`; text with mask spans for `infill`); attn [B, N] or None.
    """
    TRACE_COUNT[(o, canvas.shape)] += 1
    B, N = canvas.shape
    P = N - o.gen_length
    n_blocks = o.gen_length // o.block_length
    s = o.steps // n_blocks
    mask_id = cfg.mask_token_id
    x = constrain(canvas, ("batch", None))
    fixed = x != mask_id  # computed once: pads and prompt tokens are fixed, prompt masks are not
    pos = jnp.arange(N)

    def step(carry, g):
        x, m, done, done_at, n_fwd, n_win = carry
        b, i = g // s, g % s
        block_start = P + b * o.block_length
        block_end = block_start + o.block_length
        masked = x == mask_id
        in_block = (pos[None, :] >= block_start) & (pos[None, :] < block_end)
        m = jnp.where(i == 0, (masked & in_block).sum(axis=1), m)  # masks at block start
        k = step_budget(m, s, i).astype(jnp.int32)
        newly = answer_final(x, cfg, P) & ~done & dyn["early_exit"]
        done_at = jnp.where(newly, g, done_at)
        done = done | newly
        k = jnp.where(done, 0, k)
        key = None if rng is None else jax.random.fold_in(rng, g)

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
            x0_w, conf_w = decide(
                logits, block_start + jnp.arange(o.block_length), key, cfg, o, dyn
            )
            x0 = jax.lax.dynamic_update_slice(x, x0_w, (0, block_start))
            conf = jax.lax.dynamic_update_slice(
                jnp.full((B, N), -jnp.inf, jnp.float32), conf_w, (0, block_start)
            )
            return x0, conf

        def full(_):
            return decide(
                guided_logits(params, cfg, x, attn, fixed, o.guided, dyn), pos, key, cfg, o, dyn
            )

        active = ((k > 0) & ~done).any()
        left_clear = (~(masked & (pos[None, :] < block_start)).any(axis=1) | done).all()
        if o.use_window:
            branch = jnp.where(active, jnp.where(left_clear, 1, 2), 0)
            x0, conf = jax.lax.switch(branch, [skip, window, full], None)
        else:
            x0, conf = jax.lax.cond(active, full, skip, None)
        n_fwd = n_fwd + active.astype(jnp.int32)
        n_win = n_win + (active & left_clear & o.use_window).astype(jnp.int32)

        eligible = masked & (pos[None, :] < block_end) & ~done[:, None]
        conf = jnp.where(eligible, conf, -jnp.inf)
        x0 = jnp.where(masked, x0, x)
        commit = (rank_by_confidence(conf) < k[:, None]) & eligible
        x = constrain(jnp.where(commit, x0, x), ("batch", None))
        return (x, m, done, done_at, n_fwd, n_win), (x if o.return_history else None)

    init = (
        x,
        jnp.zeros((B,), jnp.int32),
        jnp.zeros((B,), bool),
        jnp.full((B,), o.steps, jnp.int32),
        jnp.int32(0),
        jnp.int32(0),
    )
    (x, _, done, done_at, n_fwd, n_win), history = jax.lax.scan(step, init, jnp.arange(o.steps))
    x = eos_fill_frozen(x, done, cfg, P)
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
    early_exit: bool = False,
    return_stats: bool = False,
):
    """LLaDA sampling (upstream `generate.py`): prompt [B, P] -> canvas [B, P + gen_length] int32.

    attention_mask [B, P] (1 = real token, left padding = 0) is extended with ones over the
    generated part; None means all ones. `rng` (a `jax.random` key) is required when sampling is
    random: temperature > 0 or remasking="random". Every row gets independent noise.

    return_history=True adds history [steps, B, P + gen_length] (canvas after each global step).
    early_exit=True freezes a row as soon as its answer is final (an EOS/EoT in the generated
    region with no mask before it: committed tokens never change), and runs no forward once every
    row is frozen. The canvas up to and including the first EOS/EoT — hence `decode_answer` — is
    identical to the full run; undecoded masks after it are returned as EOS. return_stats=True
    appends a dict: forward_passes, window_passes (forwards that took the block-window path),
    steps, steps_saved (scalars), done_step [B] (the step at which
    each row froze; `steps` if never). With early exit, `history` shows the frozen tail as masks
    while the returned canvas shows it as EOS. Returns canvas, (canvas, history),
    (canvas, stats) or (canvas, history, stats).
    """
    check_kind(cfg, "diffusion", "sampling.generate")
    prompt_np = np.asarray(prompt) if not isinstance(prompt, jax.Array) else prompt
    if prompt_np.ndim != 2 or prompt_np.shape[0] == 0 or prompt_np.shape[1] == 0:
        raise ValueError(
            f"prompt must be a non-empty [batch, prompt_len] array of token ids, got "
            f"shape {tuple(prompt_np.shape)}: pass at least one token (e.g. BOS)"
        )
    transformer.check_tokens(prompt, cfg, "prompt")
    check_options(
        steps=steps,
        gen_length=gen_length,
        block_length=block_length,
        remasking=remasking,
        cfg_scale=cfg_scale,
        temperature=temperature,
        rng=rng,
    )
    B, P = prompt_np.shape
    if attention_mask is not None:
        if tuple(np.shape(attention_mask)) != (B, P):
            raise ValueError(
                f"attention_mask shape {tuple(np.shape(attention_mask))} != prompt "
                f"shape {(B, P)}: pass one 0/1 entry per prompt token"
            )
        attention_mask = jnp.asarray(attention_mask, jnp.int32)
    if P + gen_length > cfg.max_seq_len:
        warnings.warn(
            f"canvas length {P + gen_length} (prompt {P} + gen_length {gen_length}) "
            f"exceeds the model's max_seq_len {cfg.max_seq_len}: quality may degrade "
            "beyond the trained context",
            stacklevel=2,
        )
    needs_rng = temperature > 0 or remasking == "random"
    o = StepOptions(
        steps=int(steps),
        gen_length=int(gen_length),
        block_length=int(block_length),
        sample=temperature > 0,
        guided=cfg_scale > 0,
        remasking=remasking,
        return_history=bool(return_history),
        use_window=_USE_WINDOW,
    )
    dyn = {
        "temperature": jnp.float32(temperature),
        "cfg_scale": jnp.float32(cfg_scale),
        "logits_eos_inf": jnp.bool_(logits_eos_inf),
        "confidence_eos_eot_inf": jnp.bool_(confidence_eos_eot_inf),
        "early_exit": jnp.bool_(early_exit),
        "logits_mask_inf": jnp.bool_(False),
    }
    prompt = jnp.asarray(prompt, jnp.int32)
    canvas = jnp.concatenate(
        [prompt, jnp.full((B, gen_length), cfg.mask_token_id, jnp.int32)], axis=1
    )
    if attention_mask is not None:
        attention_mask = jnp.concatenate(
            [attention_mask, jnp.ones((B, gen_length), jnp.int32)], axis=1
        )
    x, history, stats = _run(
        params, canvas, attention_mask, rng if needs_rng else None, dyn, cfg=cfg, o=o
    )
    out: tuple = (x,)
    if return_history:
        out += (history,)
    if return_stats:
        out += (stats,)
    return out[0] if len(out) == 1 else out


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
    block_length = block_length or N
    check_options(
        steps=steps,
        gen_length=N,
        block_length=block_length,
        remasking=remasking,
        cfg_scale=0.0,
        temperature=temperature,
        rng=rng,
    )
    if attention_mask is not None and tuple(np.shape(attention_mask)) != (B, N):
        raise ValueError(
            f"attention_mask shape {tuple(np.shape(attention_mask))} != canvas shape "
            f"{(B, N)}: pass one 0/1 entry per token"
        )
    o = StepOptions(
        steps=int(steps),
        gen_length=N,
        block_length=int(block_length),
        sample=temperature > 0,
        guided=False,
        remasking=remasking,
        return_history=bool(return_history),
        use_window=_USE_WINDOW,
    )
    dyn = {
        "temperature": jnp.float32(temperature),
        "cfg_scale": jnp.float32(0.0),
        "logits_eos_inf": jnp.bool_(False),
        "confidence_eos_eot_inf": jnp.bool_(False),
        "early_exit": jnp.bool_(False),
        "logits_mask_inf": jnp.bool_(True),
    }
    needs_rng = temperature > 0 or remasking == "random"
    x, history, _ = _run(
        params,
        jnp.asarray(canvas_np, jnp.int32),
        None if attention_mask is None else jnp.asarray(attention_mask, jnp.int32),
        rng if needs_rng else None,
        dyn,
        cfg=cfg,
        o=o,
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
__all__ = ["REMASKING", "decode_answer", "generate", "gumbel_noise", "infill", "transfer_schedule"]
