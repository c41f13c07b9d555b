"""Reverse diffusion: LLaDA's semi-autoregressive low-confidence remasking sampler.

`generate` reproduces upstream `generate.py` token for token (reference.md §4, golden README) as
ONE jitted program per (shape, static options): a `lax.scan` over all global steps with the block
index computed inside — no Python loop, no per-step dispatch. Each step does less work than the
reference, exactly, by one `lax.switch`:
  * window: when no row has a mask LEFT of the current block (the normal case) only the block can
    change, so the last layer and LM head run on its positions only (`model.apply(query_size=)`);
  * full: otherwise (prompt masks, leftovers of earlier blocks) the whole canvas, as upstream;
  * skip: a step that cannot commit anything (zero budget for every live row) runs no forward.
`early_exit=True` also freezes a row once its answer is final (an EOS/EoT with no mask before it)
and skips the forward once every row is frozen. Temperature, cfg_scale and the flags are traced,
so they share one program. Noise is drawn per (step, canvas position) with `fold_in`, so the
window and full paths see the same noise and skipped steps shift nothing. `infill` runs the same
program over a canvas whose masks sit anywhere.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lladax import model
from lladax.autoregressive import check_kind
from lladax.config import ModelConfig
from lladax.sharding import constrain

REMASKING = ("low_confidence", "random")
# Number of times the jitted sampler was traced (= compiled), per static option set; tests use it.
TRACE_COUNT: collections.Counter = collections.Counter()
# Internal switch (tests flip it): False forces the full-canvas logits path on every step.
_USE_WINDOW = True


@dataclasses.dataclass(frozen=True)
class _Opts:
    """Static (hashable) options of one compiled sampler program.

    Only what changes the program's structure is static; temperature and cfg_scale values and the
    EOS / early-exit flags are traced scalars, so changing them reuses the compiled program.
    """

    steps: int
    gen_length: int
    block_length: int
    sample: bool   # temperature > 0 (Gumbel noise is drawn)
    guided: bool   # cfg_scale > 0 (2B batch)
    remasking: str
    return_history: bool
    use_window: bool


def transfer_schedule(m: jax.Array, steps_per_block: int) -> jax.Array:
    """Tokens to commit per step: m [batch] masks at block start -> [batch, steps_per_block].

    Linear schedule ⌊m/s⌋ per step, the remainder (m mod s) going one each to the EARLIEST steps.
    """
    i = jnp.arange(steps_per_block)
    return m[:, None] // steps_per_block + (i[None, :] < m[:, None] % steps_per_block)


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
        expo = -jnp.log1p(-w)          # Exp(1); precise where it is small (w small)
        return -jnp.log(expo)          # Gumbel = −log Exp(1); upper tail reaches ≈ 31.9
    return jax.vmap(one, out_axes=1)(positions)


def _uniform_per_position(key: jax.Array, positions: jax.Array, batch: int) -> jax.Array:
    """U[0,1) float32 [batch, len(positions)], keyed per canvas position."""
    return jax.vmap(lambda p: jax.random.uniform(jax.random.fold_in(key, p), (batch,)),
                    out_axes=1)(positions)


def _decide(logits: jax.Array, positions: jax.Array, key: jax.Array | None, cfg: ModelConfig,
            o: _Opts, dyn: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
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


def _model_logits(params, cfg: ModelConfig, x: jax.Array, attn: jax.Array | None,
                  fixed: jax.Array, guided: bool, dyn: dict[str, jax.Array], **window):
    """Guided logits [B, Q, V] of tokens x [B, L]; `window`: model.apply's query/cache options
    (with return_cache=True: (logits, cache), the cache holding 2B rows under guidance)."""
    if not guided:
        return model.apply(params, cfg, x, attn, **window)
    # CFG: the unconditional copy masks every fixed (prompt and pad) position; 2B batch.
    uncond = jnp.where(fixed, cfg.mask_token_id, x)
    both_attn = None if attn is None else jnp.concatenate([attn, attn], axis=0)
    out = model.apply(params, cfg, jnp.concatenate([x, uncond], axis=0), both_attn, **window)
    both, cache = out if window.get("return_cache") else (out, None)
    c, u = both[: x.shape[0]], both[x.shape[0]:]
    logits = u + (dyn["cfg_scale"] + 1.0) * (c - u)
    return (logits, cache) if window.get("return_cache") else logits


def rank_by_confidence(conf: jax.Array) -> jax.Array:
    """conf [B, N] -> rank [B, N], descending, ties to the lower index (top-k = ranks < k)."""
    return jnp.argsort(jnp.argsort(-conf, axis=1, stable=True), axis=1)


def eos_fill_frozen(x: jax.Array, done: jax.Array, cfg: ModelConfig, prompt_len: int):
    """Rows frozen by early exit never decoded the masks after their answer: show them as EOS."""
    _, stop_at = _first_stop(x, cfg, prompt_len)
    pos = jnp.arange(x.shape[1])
    tail = done[:, None] & (pos[None, :] > stop_at[:, None]) & (x == cfg.mask_token_id)
    return jnp.where(tail, cfg.eos_token_id, x)


def _first_stop(x: jax.Array, cfg: ModelConfig, prompt_len: int) -> tuple[jax.Array, jax.Array]:
    """(has_stop [B], index [B]) of the first EOS/EoT in the generated region of x [B, N]."""
    pos = jnp.arange(x.shape[1])
    stop = x == cfg.eos_token_id
    if cfg.eot_token_id is not None:
        stop |= x == cfg.eot_token_id
    stop &= pos[None, :] >= prompt_len
    return stop.any(axis=1), jnp.argmax(stop, axis=1)


def _answer_final(x: jax.Array, cfg: ModelConfig, prompt_len: int) -> jax.Array:
    """[B] bool: the row's answer can no longer change.

    True when the generated region holds an EOS/EoT and no mask remains anywhere before the first
    one: committed tokens are never rewritten, so canvas[:stop + 1] is final.
    """
    has_stop, stop_at = _first_stop(x, cfg, prompt_len)
    pos = jnp.arange(x.shape[1])
    mask_before = ((x == cfg.mask_token_id) & (pos[None, :] < stop_at[:, None])).any(axis=1)
    return has_stop & ~mask_before


@functools.partial(jax.jit, static_argnames=("cfg", "o"))
def _run(params, canvas: jax.Array, attn: jax.Array | None, rng: jax.Array | None,
         dyn: dict[str, jax.Array], *, cfg: ModelConfig, o: _Opts):
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
        k = (m // s + (i < m % s)).astype(jnp.int32)
        newly = _answer_final(x, cfg, P) & ~done & dyn["early_exit"]
        done_at = jnp.where(newly, g, done_at)
        done = done | newly
        k = jnp.where(done, 0, k)
        key = None if rng is None else jax.random.fold_in(rng, g)

        def skip(_):
            return x, jnp.full((B, N), -jnp.inf, jnp.float32)

        def window(_):
            logits = _model_logits(params, cfg, x, attn, fixed, o.guided, dyn,
                                   query_start=block_start, query_size=o.block_length)
            x0_w, conf_w = _decide(logits, block_start + jnp.arange(o.block_length), key, cfg, o,
                                    dyn)
            x0 = jax.lax.dynamic_update_slice(x, x0_w, (0, block_start))
            conf = jax.lax.dynamic_update_slice(jnp.full((B, N), -jnp.inf, jnp.float32),
                                                conf_w, (0, block_start))
            return x0, conf

        def full(_):
            return _decide(_model_logits(params, cfg, x, attn, fixed, o.guided, dyn), pos, key,
                           cfg, o, dyn)

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

    init = (x, jnp.zeros((B,), jnp.int32), jnp.zeros((B,), bool),
            jnp.full((B,), o.steps, jnp.int32), jnp.int32(0), jnp.int32(0))
    (x, _, done, done_at, n_fwd, n_win), history = jax.lax.scan(step, init, jnp.arange(o.steps))
    x = eos_fill_frozen(x, done, cfg, P)
    stats = {"forward_passes": n_fwd, "window_passes": n_win, "steps": jnp.int32(o.steps),
             "steps_saved": jnp.int32(o.steps) - n_fwd, "done_step": done_at}
    return x, history, stats


def _check_options(*, steps: int, gen_length: int, block_length: int, remasking: str,
                   cfg_scale: float, temperature: float, rng: jax.Array | None) -> None:
    """One-line ValueErrors, each naming the fix, for the sampler's scalar options."""
    for name, v in (("steps", steps), ("gen_length", gen_length),
                    ("block_length", block_length)):
        if not isinstance(v, int | np.integer) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if gen_length % block_length:
        raise ValueError(f"gen_length={gen_length} is not a multiple of block_length="
                         f"{block_length}: choose a block_length that divides gen_length")
    n_blocks = gen_length // block_length
    if steps % n_blocks:
        raise ValueError(f"steps={steps} is not a multiple of the number of blocks {n_blocks} "
                         f"(gen_length/block_length): use steps = a multiple of {n_blocks}")
    if remasking not in REMASKING:
        raise ValueError(f"unknown remasking {remasking!r}: use one of {REMASKING}")
    if not cfg_scale >= 0:
        raise ValueError(f"cfg_scale={cfg_scale} must be >= 0 (0 disables guidance)")
    if not temperature >= 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 = greedy argmax)")
    if rng is None and (temperature > 0 or remasking == "random"):
        raise ValueError("rng is required when temperature > 0 or remasking='random': pass "
                         "rng=jax.random.key(seed)")


def generate(params, cfg: ModelConfig, prompt: Any, attention_mask: Any = None, *, steps: int,
             gen_length: int, block_length: int, temperature: float = 0.0,
             cfg_scale: float = 0.0, remasking: str = "low_confidence",
             logits_eos_inf: bool = False, confidence_eos_eot_inf: bool = False,
             rng: jax.Array | None = None, return_history: bool = False,
             early_exit: bool = False, return_stats: bool = False):
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
        raise ValueError(f"prompt must be a non-empty [batch, prompt_len] array of token ids, got "
                         f"shape {tuple(prompt_np.shape)}: pass at least one token (e.g. BOS)")
    model.check_tokens(prompt, cfg, "prompt")
    _check_options(steps=steps, gen_length=gen_length, block_length=block_length,
                   remasking=remasking, cfg_scale=cfg_scale, temperature=temperature, rng=rng)
    B, P = prompt_np.shape
    if attention_mask is not None:
        if tuple(np.shape(attention_mask)) != (B, P):
            raise ValueError(f"attention_mask shape {tuple(np.shape(attention_mask))} != prompt "
                             f"shape {(B, P)}: pass one 0/1 entry per prompt token")
        attention_mask = jnp.asarray(attention_mask, jnp.int32)
    if P + gen_length > cfg.max_seq_len:
        warnings.warn(f"canvas length {P + gen_length} (prompt {P} + gen_length {gen_length}) "
                      f"exceeds the model's max_seq_len {cfg.max_seq_len}: quality may degrade "
                      "beyond the trained context", stacklevel=2)
    needs_rng = temperature > 0 or remasking == "random"
    o = _Opts(steps=int(steps), gen_length=int(gen_length), block_length=int(block_length),
              sample=temperature > 0, guided=cfg_scale > 0, remasking=remasking,
              return_history=bool(return_history), use_window=_USE_WINDOW)
    dyn = {"temperature": jnp.float32(temperature), "cfg_scale": jnp.float32(cfg_scale),
           "logits_eos_inf": jnp.bool_(logits_eos_inf),
           "confidence_eos_eot_inf": jnp.bool_(confidence_eos_eot_inf),
           "early_exit": jnp.bool_(early_exit), "logits_mask_inf": jnp.bool_(False)}
    prompt = jnp.asarray(prompt, jnp.int32)
    canvas = jnp.concatenate([prompt, jnp.full((B, gen_length), cfg.mask_token_id, jnp.int32)],
                             axis=1)
    if attention_mask is not None:
        attention_mask = jnp.concatenate(
            [attention_mask, jnp.ones((B, gen_length), jnp.int32)], axis=1)
    x, history, stats = _run(params, canvas, attention_mask, rng if needs_rng else None, dyn,
                             cfg=cfg, o=o)
    out: tuple = (x,)
    if return_history:
        out += (history,)
    if return_stats:
        out += (stats,)
    return out[0] if len(out) == 1 else out


def infill(params, cfg: ModelConfig, canvas: Any, attention_mask: Any = None, *, steps: int,
           block_length: int | None = None, temperature: float = 0.0,
           remasking: str = "low_confidence", rng: jax.Array | None = None,
           return_history: bool = False):
    """Fill every mask id inside canvas [B, N] with the same reverse process as `generate`.

    The whole canvas is one block (or blocks of `block_length` from the left, semi-AR); the
    schedule spreads each row's mask count over `steps`; text outside the masks never changes.
    Unlike the reference `generate`, the mask id itself is never proposed, so every span is
    filled. Returns the canvas [B, N] (and history [steps, B, N] with return_history).
    """
    check_kind(cfg, "diffusion", "sampling.infill")
    canvas_np = np.asarray(canvas)
    if canvas_np.ndim != 2 or canvas_np.size == 0:
        raise ValueError(f"canvas must be a non-empty [batch, len] array of token ids, got shape "
                         f"{tuple(canvas_np.shape)}")
    model.check_tokens(canvas_np, cfg, "canvas")
    if not (canvas_np == cfg.mask_token_id).any(axis=1).all():
        raise ValueError("every canvas row needs at least one mask id to fill: mark the spans "
                         f"with mask_token_id={cfg.mask_token_id}")
    B, N = canvas_np.shape
    block_length = block_length or N
    _check_options(steps=steps, gen_length=N, block_length=block_length, remasking=remasking,
                   cfg_scale=0.0, temperature=temperature, rng=rng)
    if attention_mask is not None and tuple(np.shape(attention_mask)) != (B, N):
        raise ValueError(f"attention_mask shape {tuple(np.shape(attention_mask))} != canvas shape "
                         f"{(B, N)}: pass one 0/1 entry per token")
    o = _Opts(steps=int(steps), gen_length=N, block_length=int(block_length),
              sample=temperature > 0, guided=False, remasking=remasking,
              return_history=bool(return_history), use_window=_USE_WINDOW)
    dyn = {"temperature": jnp.float32(temperature), "cfg_scale": jnp.float32(0.0),
           "logits_eos_inf": jnp.bool_(False), "confidence_eos_eot_inf": jnp.bool_(False),
           "early_exit": jnp.bool_(False), "logits_mask_inf": jnp.bool_(True)}
    needs_rng = temperature > 0 or remasking == "random"
    x, history, _ = _run(params, jnp.asarray(canvas_np, jnp.int32),
                         None if attention_mask is None else jnp.asarray(attention_mask,
                                                                         jnp.int32),
                         rng if needs_rng else None, dyn, cfg=cfg, o=o)
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
