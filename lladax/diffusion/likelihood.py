"""Monte-Carlo ELBO log-likelihood of an answer given a prompt (upstream get_log_likelihood.py).

LLaDA scores `log p(answer | prompt)` with the lower-variance form of its ELBO (paper, App. B):
mask exactly l ~ U{1..T} of the T answer tokens (never the prompt), predict them all at once and
weight the cross-entropy by T/l. Per Monte-Carlo iteration a batch of b rows uses the stratified
counts round_half_even(linspace(k, k + (b−1)·T/b, b)) wrapped into 1..T with one k ~ U{1..T}, each
row masking that many answer positions chosen by a random permutation; p_mask = count/T. The
iteration loss is Σ_masked CE/p_mask ÷ b and the estimate is −mean over mc_num/b iterations.

Everything for one call — all iterations, all pairs of a bucket — is ONE jitted program: a
`lax.scan` over the iterations whose body runs the model on [pairs·b (×2 with CFG), L]. Pairs of
different lengths are right-padded to a bucket length and the pads are key-masked and excluded
from the loss. Right padding keeps every real token at its own position (RoPE sees the same
positions) and the mask bias makes pad keys contribute exactly zero, so a padded pair's estimate
equals the unpadded one up to float rounding. The noise of a pair depends only on its key and on
(iteration, row, position), never on the padded shape.
"""

from __future__ import annotations

import collections
import functools
import math
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lladax.batching import bucket_length
from lladax.config import ModelConfig, check_kind
from lladax.model import transformer


def _logits(
    params: Any,
    cfg: ModelConfig,
    noisy: jax.Array,
    prompt_mask: jax.Array,
    attention_mask: jax.Array | None,
    cfg_scale: jax.Array,
    guided: bool,
) -> jax.Array:
    """noisy [R, L] -> logits [R, L, V] f32; with CFG the batch is doubled by a copy whose prompt
    positions are mask ids and the halves combine as u + (cfg_scale + 1)·(c − u)."""
    if not guided:
        return transformer.apply(params, cfg, noisy, attention_mask)
    uncond = jnp.where(prompt_mask, cfg.mask_token_id, noisy)
    am = None if attention_mask is None else jnp.concatenate([attention_mask, attention_mask])
    cond, un = jnp.split(transformer.apply(params, cfg, jnp.concatenate([noisy, uncond]), am), 2)
    return un + (cfg_scale + 1.0) * (cond - un)


@functools.partial(jax.jit, static_argnames=("cfg", "guided"))
def _batch_elbo(params, clean, noisy, p_mask, prompt_len, cfg_scale, *, cfg, guided):
    prompt_mask = jnp.arange(clean.shape[1])[None, :] < prompt_len[:, None]
    logits = _logits(params, cfg, noisy, prompt_mask, None, cfg_scale, guided)
    masked = noisy == cfg.mask_token_id  # as upstream: every mask id in the input is a target
    token = jnp.where(masked, transformer.cross_entropy(logits, clean) / p_mask[:, None], 0.0)
    return jnp.sum(token) / clean.shape[0]


def batch_elbo(
    params: Any,
    cfg: ModelConfig,
    clean: Any,
    noisy: Any,
    p_mask: Any,
    prompt_len: int | Any,
    cfg_scale: float = 0.0,
) -> jax.Array:
    """Loss of one fixed noisy batch (the inner step of upstream `get_log_likelihood`).

    clean, noisy [b, L] int; p_mask [b] float; prompt_len int or [b] (prompt positions are the
    ones CFG masks in its unconditional copy). Returns Σ_{noisy == mask} CE/p_mask ÷ b, a scalar
    f32 (the log-likelihood estimate is its negative). No attention mask: rows are unpadded.
    """
    check_kind(cfg, "diffusion", "likelihood.batch_elbo")
    transformer.check_tokens(clean, cfg, "clean")
    transformer.check_tokens(noisy, cfg, "noisy")
    clean, noisy = jnp.asarray(clean, jnp.int32), jnp.asarray(noisy, jnp.int32)
    if clean.shape != noisy.shape:
        raise ValueError(f"clean {clean.shape} and noisy {noisy.shape} must have the same shape")
    if not cfg_scale >= 0:  # also refuses NaN, which would poison every estimate
        raise ValueError(f"cfg_scale={cfg_scale} must be >= 0 (0 disables guidance)")
    prompt_len = jnp.broadcast_to(jnp.asarray(prompt_len, jnp.int32), (clean.shape[0],))
    return _batch_elbo(
        params,
        clean,
        noisy,
        jnp.asarray(p_mask, jnp.float32),
        prompt_len,
        jnp.float32(cfg_scale),
        cfg=cfg,
        guided=cfg_scale > 0,
    )


def _stratified_counts(k: jax.Array, T: jax.Array, b: int) -> jax.Array:
    """Upstream's mask counts [b] int32 in 1..T: round(linspace(k, k + (b−1)·T/b, b)), wrapped.

    linspace's i-th value is k + i·T/b; it is rounded half-to-even here in exact integer
    arithmetic ((k·b + i·T) / b), which is what torch's float32 linspace gives whenever its
    float math is exact — always for power-of-two b (the reference's 16). Float code would not
    do: XLA may turn the division by b−1 into a reciprocal multiply and flip .5 ties.
    """
    num = k.astype(jnp.int32) * b + jnp.arange(b, dtype=jnp.int32) * T.astype(jnp.int32)
    q, r = num // b, num % b
    up = (2 * r > b) | ((2 * r == b) & (q % 2 == 1))
    counts = q + up.astype(jnp.int32)
    return (counts - 1) % T + 1


def _draw_masks(
    u: jax.Array, T: jax.Array, is_answer: jax.Array, b: int
) -> tuple[jax.Array, jax.Array]:
    """One iteration's noise for one pair: u [1 + L, b] uniforms -> (masked [b, L] bool,
    p_mask [b] f32).

    u[0, 0] draws k ~ U{1..T}; row j masks exactly counts[j] answer positions: those whose score
    u[1 + p, j] ranks lowest among the answer positions (a uniformly random subset, like
    upstream's randperm). Non-answer positions never rank low enough to be chosen.
    """
    k = 1 + jnp.minimum(jnp.floor(u[0, 0] * T).astype(jnp.int32), T - 1)
    counts = _stratified_counts(k, T, b)
    scores = jnp.where(is_answer[None, :], u[1:].T, 2.0)
    rank = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)
    masked = (rank < counts[:, None]) & is_answer[None, :]
    return masked, counts.astype(jnp.float32) / T.astype(jnp.float32)


def _mix32(x: jax.Array) -> jax.Array:
    """Wellons' `lowbias32` integer hash: a bijection of uint32 with near-ideal avalanche."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def _uniforms(key: jax.Array, L: int, n_iter: int, b: int) -> jax.Array:
    """[1 + L, n_iter, b] uniforms in [0, 1) for one pair: a counter-based hash of the pair's
    key and each element's flat index.

    The layout — position outermost — makes an element's flat index, hence its value,
    independent of L, so the noise of a position does not depend on padding. A hash rather
    than `jax.random.uniform`: threefry over this shape costs ~3 s of XLA compile per program
    on CPU, the hash almost nothing. The key's 64 bits seed it, so keys still decide all noise.
    """
    seed = jax.random.key_data(key).reshape(-1).astype(jnp.uint32)
    idx = jnp.arange((1 + L) * n_iter * b, dtype=jnp.uint32).reshape(1 + L, n_iter, b)
    h = _mix32(_mix32(idx ^ _mix32(seed[0])) + seed[-1])
    h = _mix32(h ^ jnp.uint32(0x9E3779B9))
    return (h >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)


@functools.partial(jax.jit, static_argnames=("cfg", "n_iter", "batch_size", "guided", "padded"))
def _mc_row_losses(
    params, tokens, prompt_len, length, keys, cfg_scale, *, cfg, n_iter, batch_size, guided, padded
):
    """tokens [N, L] (right padded), prompt_len, length [N] int, keys [N] -> [n_iter, N, b] f32:
    each row's Σ_masked CE/p_mask for every Monte-Carlo iteration (one `lax.scan`)."""
    N, L = tokens.shape
    b = batch_size
    pos = jnp.arange(L)[None, :]
    valid = pos < length[:, None]
    is_prompt = pos < prompt_len[:, None]
    is_answer = valid & ~is_prompt
    T = length - prompt_len

    def rows(a: jax.Array) -> jax.Array:  # [N, ...] -> [N·b, ...]: b rows per pair
        return jnp.repeat(a, b, axis=0)

    attention_mask = rows(valid).astype(jnp.int32) if padded else None

    noise = jax.vmap(_uniforms, in_axes=(0, None, None, None))(keys, L, n_iter, b)

    def one_iteration(carry, u):  # u [N, 1 + L, b]: this iteration's noise for every pair
        masked, p_mask = jax.vmap(_draw_masks, in_axes=(0, 0, 0, None))(u, T, is_answer, b)
        masked, p_mask = masked.reshape(N * b, L), p_mask.reshape(N * b)
        clean = rows(tokens)
        noisy = jnp.where(masked, cfg.mask_token_id, clean)
        logits = _logits(params, cfg, noisy, rows(is_prompt), attention_mask, cfg_scale, guided)
        targets = (noisy == cfg.mask_token_id) & rows(valid)
        token = jnp.where(targets, transformer.cross_entropy(logits, clean) / p_mask[:, None], 0.0)
        return carry, jnp.sum(token, axis=-1).reshape(N, b)

    _, losses = jax.lax.scan(one_iteration, None, jnp.moveaxis(noise, 2, 0))
    return losses


def _check_pair(
    cfg: ModelConfig, prompt: Any, answer: Any, i: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    where = "" if i is None else f" (pair {i})"
    prompt, answer = np.asarray(prompt).reshape(-1), np.asarray(answer).reshape(-1)
    if answer.size == 0:
        raise ValueError(f"answer is empty{where}: the ELBO needs at least one answer token")
    for name, ids in (("prompt", prompt), ("answer", answer)):
        if ids.size:
            transformer.check_tokens(ids[None, :], cfg, name + where)
    return prompt.astype(np.int32), answer.astype(np.int32)


class _MonteCarlo(NamedTuple):
    """The estimator's settings: n_iter iterations of batch_size rows per pair, CFG scale."""

    n_iter: int
    batch_size: int
    cfg_scale: float


def _check_mc(mc_num: int, batch_size: int, cfg_scale: float, rng: Any) -> _MonteCarlo:
    if batch_size < 1 or mc_num < batch_size or mc_num % batch_size:
        raise ValueError(
            f"mc_num={mc_num} must be a positive multiple of batch_size="
            f"{batch_size} (the estimate averages mc_num/batch_size batches)"
        )
    if not cfg_scale >= 0:  # also refuses NaN, which would poison every estimate
        raise ValueError(f"cfg_scale={cfg_scale} must be >= 0 (0 disables guidance)")
    if rng is None:
        raise ValueError("log_likelihood draws random masks: pass rng=jax.random.key(seed)")
    return _MonteCarlo(mc_num // batch_size, batch_size, cfg_scale)


def _summarise(row_losses: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """row_losses [n_iter, N, b] -> (estimate [N], standard error [N]).

    Iterations are i.i.d., so with ≥ 2 of them the standard error is std(iteration losses)/√n.
    With one iteration it falls back to std(rows)/√b, which ignores the stratification's negative
    correlation between rows and therefore over-states the error (conservative).
    """
    iters = row_losses.sum(axis=-1) / batch_size  # [n_iter, N]
    est = -iters.mean(axis=0)
    n = iters.shape[0]
    if n > 1:
        se = iters.std(axis=0, ddof=1) / math.sqrt(n)
    elif batch_size > 1:
        se = row_losses[0].std(axis=-1, ddof=1) / math.sqrt(batch_size)
    else:
        se = np.full_like(est, np.nan)
    return est, se


def _estimate(params, cfg, tokens, prompt_lens, lengths, keys, mc: _MonteCarlo, *, padded: bool):
    """tokens [N, L] int32 (right padded when `padded`), prompt_lens and lengths [N], keys [N]
    -> (estimate [N], standard error [N]) float64: the Monte-Carlo program, then `_summarise`."""
    losses = _mc_row_losses(
        params,
        jnp.asarray(tokens),
        jnp.asarray(prompt_lens, jnp.int32),
        jnp.asarray(lengths, jnp.int32),
        keys,
        jnp.float32(mc.cfg_scale),
        cfg=cfg,
        n_iter=mc.n_iter,
        batch_size=mc.batch_size,
        guided=mc.cfg_scale > 0,
        padded=padded,
    )
    return _summarise(np.asarray(losses, np.float64), mc.batch_size)


def log_likelihood_batch(
    params: Any,
    cfg: ModelConfig,
    prompts: Sequence[Any],
    answers: Sequence[Any],
    *,
    mc_num: int = 128,
    batch_size: int = 16,
    cfg_scale: float = 0.0,
    rng: jax.Array,
    pairs_per_call: int | None = None,
    return_stderr: bool = False,
):
    """ELBO estimates of log p(answer_i | prompt_i) for many pairs of any lengths.

    prompts, answers: sequences of 1-D token-id sequences (a prompt may be empty, an answer not).
    Pair i uses the key `jax.random.split(rng, n)[i]` (or rng[i] when rng is an array of n
    typed keys, e.g. one per question), so its estimate equals
    `log_likelihood(..., rng=that key)` whatever else is in the batch (up to float rounding).
    Pairs are sorted by length, right-padded to `bucket_length`, and run `pairs_per_call` at a
    time (default: as many as fit in max(16, batch_size) rows, i.e. the reference's forward size
    for batch 16); the last group is filled with copies so a bucket compiles once.
    Returns estimates [n] float64 (and standard errors [n] with return_stderr=True).
    """
    check_kind(cfg, "diffusion", "likelihood.log_likelihood_batch")
    if len(prompts) != len(answers):
        raise ValueError(
            f"{len(prompts)} prompts but {len(answers)} answers: pass one of each per pair"
        )
    mc = _check_mc(mc_num, batch_size, cfg_scale, rng)
    if pairs_per_call is not None and pairs_per_call < 1:
        raise ValueError(
            f"pairs_per_call={pairs_per_call} must be >= 1 (or None: "
            "max(16, batch_size) // batch_size)"
        )
    pairs = [
        _check_pair(cfg, p, a, i) for i, (p, a) in enumerate(zip(prompts, answers, strict=True))
    ]
    n = len(pairs)
    if n == 0:
        return (np.zeros(0), np.zeros(0)) if return_stderr else np.zeros(0)
    per_pair = jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key) and rng.shape == (n,)
    keys = rng if per_pair else jax.random.split(rng, n)
    est, se = np.zeros(n), np.zeros(n)
    per_call = pairs_per_call or max(1, max(16, batch_size) // batch_size)
    lengths = np.array([len(p) + len(a) for p, a in pairs], dtype=np.int64)
    if lengths.size and lengths.max() > cfg.max_seq_len:
        warnings.warn(
            f"a pair has {lengths.max()} tokens, more than the model's max_seq_len "
            f"{cfg.max_seq_len}: scores beyond the trained context are unreliable",
            stacklevel=2,
        )
    order = np.argsort(lengths, kind="stable")
    groups: dict[int, list[int]] = collections.defaultdict(list)
    for i in order:
        groups[bucket_length(int(lengths[i]))].append(int(i))
    for L, members in groups.items():
        for start in range(0, len(members), per_call):
            chunk = members[start : start + per_call]
            size = per_call if len(members) > per_call else 1 << (len(chunk) - 1).bit_length()
            idx = chunk + [chunk[-1]] * (size - len(chunk))
            tokens = np.full((size, L), cfg.pad_token_id, np.int32)
            for r, i in enumerate(idx):
                tokens[r, : lengths[i]] = np.concatenate(pairs[i])
            prompt_lens = [len(pairs[i][0]) for i in idx]
            e, s = _estimate(
                params,
                cfg,
                tokens,
                prompt_lens,
                lengths[idx],
                keys[np.asarray(idx)],
                mc,
                padded=True,
            )
            est[chunk], se[chunk] = e[: len(chunk)], s[: len(chunk)]
    return (est, se) if return_stderr else est


def log_likelihood(
    params: Any,
    cfg: ModelConfig,
    prompt: Any,
    answer: Any,
    *,
    mc_num: int = 128,
    batch_size: int = 16,
    cfg_scale: float = 0.0,
    rng: jax.Array,
    return_stderr: bool = False,
):
    """Monte-Carlo ELBO of log p(answer | prompt) (upstream `get_log_likelihood`).

    prompt [P], answer [T] (T ≥ 1) token ids. Runs the single unpadded sequence with no attention
    mask, exactly as the reference, in one jitted program (mc_num/batch_size scan iterations of a
    [batch_size, P+T] forward). Returns a float (and its standard error with return_stderr=True;
    see `_summarise`).
    """
    mc = _check_mc(mc_num, batch_size, cfg_scale, rng)
    prompt, answer = _check_pair(cfg, prompt, answer)
    seq = np.concatenate([prompt, answer])[None, :]
    est, se = _estimate(
        params, cfg, seq, [len(prompt)], [seq.shape[1]], rng[None], mc, padded=False
    )
    return (float(est[0]), float(se[0])) if return_stderr else float(est[0])
