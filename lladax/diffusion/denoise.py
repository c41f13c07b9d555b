"""One reverse-diffusion step's decisions, shared by `sampling`, `fast_sampling` and
`block_sampling`.

Given the model's logits at some canvas positions: which token each masked position would take
(argmax, or a Gumbel-max sample of softmax(logits / T)), how confident it is (low-confidence
remasking) or a uniform score (random remasking), which positions to commit this step
(`rank_by_confidence` against the step's budget, `transfer_schedule`; with the threshold /
factor rules, `commit_step`), classifier-free guidance
(`guided_logits`), and when a row's answer can no longer change (`answer_final`, early exit).
Noise is keyed per canvas position (`fold_in`), so a window of positions draws exactly what the
full canvas would draw there. `prompt_canvas` builds the canvas both samplers start from; their
options are `sampler_config.SamplerConfig`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lladax.config import ModelConfig
from lladax.diffusion.sampler_config import StaticOptions
from lladax.model import transformer


def step_budget(m: jax.Array, steps_per_block: int, i: jax.Array) -> jax.Array:
    """Tokens to commit at step i of a block whose rows had m masks at its start (any shapes that
    broadcast): ⌊m/s⌋, plus one for the first (m mod s) steps."""
    return m // steps_per_block + (i < m % steps_per_block)


def transfer_schedule(m: jax.Array, steps_per_block: int) -> jax.Array:
    """Tokens to commit per step: m [batch] masks at block start -> [batch, steps_per_block].

    Linear schedule ⌊m/s⌋ per step, the remainder (m mod s) going one each to the EARLIEST steps.
    """
    return step_budget(m[:, None], steps_per_block, jnp.arange(steps_per_block)[None, :])


def _uniform_hp(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """U(0,1) float32 with ~46 bits of resolution near 0 (plain float32 uniforms have 23).

    w = (a + (b + ½)·2⁻²³)·2⁻²³ with a, b independent 23-bit integers: uniform on (0, 1), never 0,
    and its small values are as finely spaced as float64's. Used for exponential/Gumbel noise
    whose upper tail is set by how close to 0 the uniform can get.
    """
    bits = jax.random.bits(key, (2, *shape), jnp.uint32) >> 9
    a, b = bits[0].astype(jnp.float32), bits[1].astype(jnp.float32)
    return (a + (b + 0.5) * 2.0**-23) * 2.0**-23


def gumbel_noise(key: jax.Array, positions: jax.Array, batch: int, vocab: int) -> jax.Array:
    """Standard Gumbel noise [batch, len(positions), vocab], one independent draw per position.

    Each canvas position has its own key (`fold_in(key, position)`), so a window of positions
    gets exactly the values the full canvas would get there.
    """

    def one(p):
        w = _uniform_hp(jax.random.fold_in(key, p), (batch, vocab))
        expo = -jnp.log1p(-w)  # Exp(1); precise where it is small (w small)
        return -jnp.log(expo)  # Gumbel = −log Exp(1); upper tail reaches ≈ 31.9

    return jax.vmap(one, out_axes=1)(positions)


def _uniform_per_position(key: jax.Array, positions: jax.Array, batch: int) -> jax.Array:
    """U[0,1) float32 [batch, len(positions)], keyed per canvas position."""
    return jax.vmap(lambda p: jax.random.uniform(jax.random.fold_in(key, p), (batch,)), out_axes=1)(
        positions
    )


def decide(
    logits: jax.Array,
    positions: jax.Array,
    key: jax.Array | None,
    cfg: ModelConfig,
    o: StaticOptions,
    dyn: dict[str, jax.Array],
) -> tuple[jax.Array, jax.Array]:
    """Per-position proposal and confidence: logits [B, Q, V] f32 -> (x0 [B, Q], conf [B, Q]).

    Sampling at T > 0 (Gumbel-max): the reference computes, in float64,
    argmax exp(l) / (−log u)^T = argmax (l + T·g) with g = −log(−log u) a standard Gumbel; that is
    a sample of softmax(l/T). We evaluate the equivalent log-space form l + T·g in float32. What
    float64 buys the reference (arXiv 2409.02908) is the Gumbel *upper tail*: float32 uniforms
    (23 bits) cap g at ≈ 16 and lower the effective temperature over a 126k vocabulary; our
    46-bit uniform (`_uniform_hp`) caps it at ≈ 31.9 (float64: ≈ 36.7; the mass beyond 31.9 is
    e⁻³¹·⁹ ≈ 1e-14 per entry). Rounding of l + T·g (≈ 4e-6 absolute) only matters at exact ties.
    """
    B, _, V = logits.shape
    neg_inf = jnp.float32(-jnp.inf)

    def drop(logits, column, flag):  # column -> −inf where the (traced) flag is set
        return logits.at[..., column].set(jnp.where(flag, neg_inf, logits[..., column]))

    logits = drop(logits, cfg.eos_token_id, dyn["logits_eos_inf"])
    logits = drop(logits, cfg.mask_token_id, dyn["logits_mask_inf"])  # infill: always fill
    if o.sample:
        g = gumbel_noise(jax.random.fold_in(key, 0), positions, B, V)
        x0 = jnp.argmax(logits + dyn["temperature"] * g, axis=-1)
    else:
        x0 = jnp.argmax(logits, axis=-1)
    x0 = x0.astype(jnp.int32)
    if o.remasking == "random":
        return x0, _uniform_per_position(jax.random.fold_in(key, 1), positions, B)
    # confidence_eos_eot_inf: upstream sets noisy[EOS] and logits[EoT] to −inf after the argmax.
    # At T = 0 `noisy` IS `logits` (same tensor), so both columns vanish from the confidence
    # softmax; at T > 0 the EOS edit lands on a dead float64 copy and only EoT is removed.
    if cfg.eot_token_id is not None:
        logits = drop(logits, cfg.eot_token_id, dyn["confidence_eos_eot_inf"])
    if not o.sample:
        logits = drop(logits, cfg.eos_token_id, dyn["confidence_eos_eot_inf"])
    # softmax(logits)[x0] in float32, same formula as torch: exp(l − max) / Σ exp(l − max)
    mx = jnp.max(logits, axis=-1, keepdims=True)
    total = jnp.sum(jnp.exp(logits - mx), axis=-1)
    picked = jnp.take_along_axis(logits, x0[..., None], axis=-1)[..., 0]
    return x0, jnp.exp(picked - mx[..., 0]) / total


def guided_logits(
    params,
    cfg: ModelConfig,
    x: jax.Array,
    attn: jax.Array | None,
    fixed: jax.Array,
    guided: bool,
    dyn: dict[str, jax.Array],
    **window,
):
    """Guided logits [B, Q, V] of tokens x [B, L]; `window`: transformer.apply's query/cache options
    (with return_cache=True: (logits, cache), the cache holding 2B rows under guidance)."""
    if not guided:
        return transformer.apply(params, cfg, x, attn, **window)
    # CFG: the unconditional copy masks every fixed (prompt and pad) position; 2B batch.
    uncond = jnp.where(fixed, cfg.mask_token_id, x)
    both_attn = None if attn is None else jnp.concatenate([attn, attn], axis=0)
    out = transformer.apply(params, cfg, jnp.concatenate([x, uncond], axis=0), both_attn, **window)
    both, cache = out if window.get("return_cache") else (out, None)
    c, u = both[: x.shape[0]], both[x.shape[0] :]
    logits = u + (dyn["cfg_scale"] + 1.0) * (c - u)
    return (logits, cache) if window.get("return_cache") else logits


def rank_by_confidence(conf: jax.Array) -> jax.Array:
    """conf [B, N] -> rank [B, N], descending, ties to the lower index (top-k = ranks < k)."""
    return jnp.argsort(jnp.argsort(-conf, axis=1, stable=True), axis=1)


def commit_step(
    x: jax.Array,
    start: jax.Array | int,
    logits: jax.Array,
    live: jax.Array,
    m: jax.Array,
    i: jax.Array,
    steps_per_block: int,
    key: jax.Array | None,
    cfg: ModelConfig,
    o: StaticOptions,
    dyn: dict[str, jax.Array],
) -> tuple[jax.Array, jax.Array]:
    """Step i of a block of the fast and block-diffusion samplers: commit the schedule's top-k
    (k >= 1) and every mask passing the threshold / factor rule (`dyn`), in `live` rows only.

    x [B, N]; logits [B, W, V] of the block's W positions [start, start + W); live [B] bool;
    m [B]: masks at block start (counted here at i == 0). -> (x [B, N], m [B]).
    """
    size = logits.shape[1]
    x0, conf = decide(logits, start + jnp.arange(size), key, cfg, o, dyn)
    x_w = jax.lax.dynamic_slice_in_dim(x, start, size, axis=1)
    eligible = (x_w == cfg.mask_token_id) & live[:, None]
    m = jnp.where(i == 0, eligible.sum(axis=1), m)  # masks at block start: the schedule
    k = jnp.maximum(step_budget(m, steps_per_block, i), 1)
    conf = jnp.where(eligible, conf, -jnp.inf)
    rank = rank_by_confidence(conf)
    extra = (conf >= dyn["threshold"]) | (conf >= 1.0 - dyn["factor"] / (rank + 2.0))
    commit = eligible & ((rank < k[:, None]) | extra)
    return jax.lax.dynamic_update_slice_in_dim(x, jnp.where(commit, x0, x_w), start, axis=1), m


def eos_fill_frozen(x: jax.Array, done: jax.Array, cfg: ModelConfig, prompt_len: int):
    """Rows frozen by early exit never decoded the masks after their answer: show them as EOS."""
    _, stop_at = first_stop(x, cfg, prompt_len)
    pos = jnp.arange(x.shape[1])
    tail = done[:, None] & (pos[None, :] > stop_at[:, None]) & (x == cfg.mask_token_id)
    return jnp.where(tail, cfg.eos_token_id, x)


def first_stop(x: jax.Array, cfg: ModelConfig, prompt_len: int) -> tuple[jax.Array, jax.Array]:
    """(has_stop [B], index [B]) of the first EOS/EoT in the generated region of x [B, N]."""
    pos = jnp.arange(x.shape[1])
    stop = x == cfg.eos_token_id
    if cfg.eot_token_id is not None:
        stop |= x == cfg.eot_token_id
    stop &= pos[None, :] >= prompt_len
    return stop.any(axis=1), jnp.argmax(stop, axis=1)


def answer_final(x: jax.Array, cfg: ModelConfig, prompt_len: int) -> jax.Array:
    """[B] bool: the row's answer can no longer change.

    True when the generated region holds an EOS/EoT and no mask remains anywhere before the first
    one: committed tokens are never rewritten, so canvas[:stop + 1] is final.
    """
    has_stop, stop_at = first_stop(x, cfg, prompt_len)
    pos = jnp.arange(x.shape[1])
    mask_before = ((x == cfg.mask_token_id) & (pos[None, :] < stop_at[:, None])).any(axis=1)
    return has_stop & ~mask_before


def prompt_canvas(
    cfg: ModelConfig, prompt: Any, attention_mask: Any, gen_length: int
) -> tuple[jax.Array, jax.Array | None]:
    """The canvas both samplers start from, with one-line errors for a bad prompt or mask.

    prompt [B, P] token ids and attention_mask [B, P] (1 = real token, left padding = 0) or None
    -> (canvas [B, P + gen_length] int32: the prompt then masks, attention [B, P + gen_length]
    int32, ones over the generated part, or None). A jax.Array prompt keeps its sharding.
    """
    arr = prompt if isinstance(prompt, jax.Array) else np.asarray(prompt)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(
            f"prompt must be a non-empty [batch, prompt_len] array of token ids, got "
            f"shape {tuple(arr.shape)}: pass at least one token (e.g. BOS)"
        )
    transformer.check_tokens(arr, cfg, "prompt")
    B, P = arr.shape
    if attention_mask is not None and tuple(np.shape(attention_mask)) != (B, P):
        raise ValueError(
            f"attention_mask shape {tuple(np.shape(attention_mask))} != prompt "
            f"shape {(B, P)}: pass one 0/1 entry per prompt token"
        )
    masks = jnp.full((B, gen_length), cfg.mask_token_id, jnp.int32)
    canvas = jnp.concatenate([jnp.asarray(arr, jnp.int32), masks], axis=1)
    if attention_mask is None:
        return canvas, None
    ones = jnp.ones((B, gen_length), jnp.int32)
    return canvas, jnp.concatenate([jnp.asarray(attention_mask, jnp.int32), ones], axis=1)


__all__ = [
    "answer_final",
    "commit_step",
    "decide",
    "eos_fill_frozen",
    "first_stop",
    "guided_logits",
    "gumbel_noise",
    "prompt_canvas",
    "rank_by_confidence",
    "transfer_schedule",
]
