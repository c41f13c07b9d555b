"""One reverse-diffusion step's decisions, shared by `sampling` and `fast_sampling`.

Given the model's logits at some canvas positions: which token each masked position would take
(argmax, or a Gumbel-max sample of softmax(logits / T)), how confident it is (low-confidence
remasking) or a uniform score (random remasking), which positions to commit this step
(`rank_by_confidence` against the step's budget, `transfer_schedule`), classifier-free guidance
(`guided_logits`), and when a row's answer can no longer change (`answer_final`, early exit).
Noise is keyed per canvas position (`fold_in`), so a window of positions draws exactly what the
full canvas would draw there. `check_options` validates the samplers' scalar options.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from lladax.config import ModelConfig
from lladax.model import transformer

REMASKING = ("low_confidence", "random")


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """Static (hashable) options of one compiled sampler program (`sampling`, `fast_sampling`).

    Only what changes the program's structure is static; temperature and cfg_scale values and the
    EOS / early-exit flags are traced scalars, so changing them reuses the compiled program.
    """

    steps: int
    gen_length: int
    block_length: int
    sample: bool  # temperature > 0 (Gumbel noise is drawn)
    guided: bool  # cfg_scale > 0 (2B batch)
    remasking: str
    return_history: bool
    use_window: bool


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
    o: StepOptions,
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


def check_options(
    *,
    steps: int,
    gen_length: int,
    block_length: int,
    remasking: str,
    cfg_scale: float,
    temperature: float,
    rng: jax.Array | None,
) -> None:
    """One-line ValueErrors, each naming the fix, for the sampler's scalar options."""
    for name, v in (("steps", steps), ("gen_length", gen_length), ("block_length", block_length)):
        if not isinstance(v, int | np.integer) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if gen_length % block_length:
        raise ValueError(
            f"gen_length={gen_length} is not a multiple of block_length="
            f"{block_length}: choose a block_length that divides gen_length"
        )
    n_blocks = gen_length // block_length
    if steps % n_blocks:
        raise ValueError(
            f"steps={steps} is not a multiple of the number of blocks {n_blocks} "
            f"(gen_length/block_length): use steps = a multiple of {n_blocks}"
        )
    if remasking not in REMASKING:
        raise ValueError(f"unknown remasking {remasking!r}: use one of {REMASKING}")
    if not cfg_scale >= 0:
        raise ValueError(f"cfg_scale={cfg_scale} must be >= 0 (0 disables guidance)")
    if not temperature >= 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 = greedy argmax)")
    if rng is None and (temperature > 0 or remasking == "random"):
        raise ValueError(
            "rng is required when temperature > 0 or remasking='random': pass "
            "rng=jax.random.key(seed)"
        )


__all__ = [
    "REMASKING",
    "StepOptions",
    "answer_final",
    "check_options",
    "decide",
    "eos_fill_frozen",
    "first_stop",
    "guided_logits",
    "gumbel_noise",
    "rank_by_confidence",
    "transfer_schedule",
]
