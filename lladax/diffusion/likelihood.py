"""Monte-Carlo ELBO log-likelihood of an answer given a prompt (upstream get_log_likelihood.py).

LLaDA scores `log p(answer | prompt)` with the lower-variance form of its ELBO (paper, App. B):
mask exactly l ~ U{1..T} of the T answer tokens (never the prompt), predict them all at once and
weight the cross-entropy by T/l (stratified counts over the b rows of an iteration:
`block_likelihood`). The iteration loss is Σ_masked CE/p_mask ÷ b and the estimate is −mean over
mc_num/b iterations.

A block-diffusion model (`kind="block_diffusion"`) factorises over blocks of `block_size` aligned
from position 0 of prompt + answer, as in training, so what is estimated is its block ELBO:
log p(answer | prompt) >= Σ over blocks of the block's masked-diffusion ELBO given the clean
earlier blocks, each block with LLaDA's estimator on its own answer tokens (l_b ~ U{1..T_b}, weight
T_b/l_b; blocks without answer tokens contribute nothing). All blocks of a row are predicted in
ONE forward over [noisy | clean] (`losses.denoiser_logits`). With block_size >= the sequence it
is LLaDA's estimate, number for number on the same key.

Everything for one call — all iterations, all pairs of a bucket — is ONE jitted program: a
`lax.scan` over the iterations whose body runs the model on [pairs·b (×2 with CFG), L]. Pairs of
different lengths are right-padded to a bucket length and the pads are key-masked and excluded
from the loss. Right padding keeps every real token at its own position (RoPE sees the same
positions, blocks stay aligned) and the mask bias makes pad keys contribute exactly zero, so a
padded pair's estimate equals the unpadded one up to float rounding. The noise of a pair depends
only on its key and on (iteration, row, position or block), never on the padded shape.
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
from lladax.diffusion import block_likelihood, losses
from lladax.model import transformer

KINDS = ("diffusion", "block_diffusion")  # the models whose likelihood this module estimates


def _logits(
    params: Any,
    cfg: ModelConfig,
    clean: jax.Array,
    noisy: jax.Array,
    prompt_mask: jax.Array,
    attention_mask: jax.Array | None,
    cfg_scale: jax.Array,
    guided: bool,
) -> jax.Array:
    """clean, noisy [R, L] -> the mask predictor's logits [R, L, V] f32 for noisy (block
    diffusion also sees the clean earlier blocks). With CFG the batch is doubled by a copy whose
    prompt positions are mask ids (in both of block diffusion's copies) and the halves combine as
    u + (cfg_scale + 1)·(c − u)."""
    if not guided:
        return losses.denoiser_logits(params, cfg, clean, noisy, attention_mask)

    def with_uncond(a: jax.Array) -> jax.Array:
        return jnp.concatenate([a, jnp.where(prompt_mask, cfg.mask_token_id, a)])

    am = None if attention_mask is None else jnp.concatenate([attention_mask, attention_mask])
    both = losses.denoiser_logits(params, cfg, with_uncond(clean), with_uncond(noisy), am)
    cond, un = jnp.split(both, 2)
    return un + (cfg_scale + 1.0) * (cond - un)


@functools.partial(jax.jit, static_argnames=("cfg", "guided"))
def _batch_elbo(params, clean, noisy, p_mask, prompt_len, cfg_scale, *, cfg, guided):
    prompt_mask = jnp.arange(clean.shape[1])[None, :] < prompt_len[:, None]
    logits = _logits(params, cfg, clean, noisy, prompt_mask, None, cfg_scale, guided)
    # as upstream: every mask id in the input is a target
    token = losses.weighted_token_loss(logits, clean, noisy, p_mask, cfg.mask_token_id)
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

    clean, noisy [b, L] int; p_mask [b] float (block diffusion: [b, L], each token its block's);
    prompt_len int or [b] (prompt positions are the ones CFG masks in its unconditional copy).
    Returns Σ_{noisy == mask} CE/p_mask ÷ b, a scalar f32 (the log-likelihood estimate is its
    negative). No attention mask: rows are unpadded.
    """
    check_kind(cfg, KINDS, "likelihood.batch_elbo")
    transformer.check_tokens(clean, cfg, "clean")
    transformer.check_tokens(noisy, cfg, "noisy")
    clean, noisy = jnp.asarray(clean, jnp.int32), jnp.asarray(noisy, jnp.int32)
    p_mask = jnp.asarray(p_mask, jnp.float32)
    if clean.shape != noisy.shape:
        raise ValueError(f"clean {clean.shape} and noisy {noisy.shape} must have the same shape")
    if p_mask.shape not in (clean.shape[:1], clean.shape):
        raise ValueError(
            f"p_mask {p_mask.shape} must be [b] = {clean.shape[:1]} (one per row) or "
            f"[b, L] = {clean.shape} (per token, block diffusion)"
        )
    if not cfg_scale >= 0:  # also refuses NaN, which would poison every estimate
        raise ValueError(f"cfg_scale={cfg_scale} must be >= 0 (0 disables guidance)")
    prompt_len = jnp.broadcast_to(jnp.asarray(prompt_len, jnp.int32), (clean.shape[0],))
    return _batch_elbo(
        params,
        clean,
        noisy,
        p_mask,
        prompt_len,
        jnp.float32(cfg_scale),
        cfg=cfg,
        guided=cfg_scale > 0,
    )


@functools.partial(jax.jit, static_argnames=("cfg", "n_iter", "batch_size", "guided", "padded"))
def _mc_row_losses(
    params, tokens, prompt_len, length, keys, cfg_scale, *, cfg, n_iter, batch_size, guided, padded
):
    """tokens [N, L] (right padded), prompt_len, length [N] int, keys [N] -> [n_iter, N, b] f32:
    each row's Σ_masked CE/p_mask for every Monte-Carlo iteration (one `lax.scan`)."""
    N, L = tokens.shape
    b = batch_size
    span = min(cfg.block_size or L, L)  # positions per ELBO block: LLaDA's sequence is one
    pos = jnp.arange(L)[None, :]
    valid = pos < length[:, None]
    is_prompt = pos < prompt_len[:, None]
    is_answer = valid & ~is_prompt

    def rows(a: jax.Array) -> jax.Array:  # [N, ...] -> [N·b, ...]: b rows per pair
        return jnp.repeat(a, b, axis=0)

    attention_mask = rows(valid).astype(jnp.int32) if padded else None
    clean = rows(tokens)
    noise = jax.vmap(block_likelihood.uniforms, in_axes=(0, None, None, None))(keys, L, n_iter, b)
    block_noise = jax.vmap(block_likelihood.block_uniforms, in_axes=(0, None, None))(
        keys, -(-L // span), n_iter
    )
    draw = jax.vmap(block_likelihood.draw_block_masks, in_axes=(0, 0, 0, None, None))

    def one_iteration(carry, u):  # u: this iteration's noise, [N, 1 + L, b] and [N, n_blocks]
        masked, p_mask = draw(*u, is_answer, b, span)
        masked, p_mask = masked.reshape(N * b, L), p_mask.reshape(N * b, L)
        if span == L:  # one block: a p_mask per row, LLaDA's numbers bit for bit
            p_mask = p_mask[:, 0]
        noisy = jnp.where(masked, cfg.mask_token_id, clean)
        logits = _logits(
            params, cfg, clean, noisy, rows(is_prompt), attention_mask, cfg_scale, guided
        )
        # as upstream every mask id in the input is a target; pads hold pad_token_id, never one
        token = losses.weighted_token_loss(logits, clean, noisy, p_mask, cfg.mask_token_id)
        return carry, jnp.sum(token, axis=-1).reshape(N, b)

    u = (jnp.moveaxis(noise, 2, 0), jnp.moveaxis(block_noise, 2, 0))
    _, row_losses = jax.lax.scan(one_iteration, None, u)
    return row_losses


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
    check_kind(cfg, KINDS, "likelihood.log_likelihood_batch")
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
    see `_summarise`). A block-diffusion cfg estimates its block ELBO (the module doc).
    """
    check_kind(cfg, KINDS, "likelihood.log_likelihood")
    mc = _check_mc(mc_num, batch_size, cfg_scale, rng)
    prompt, answer = _check_pair(cfg, prompt, answer)
    seq = np.concatenate([prompt, answer])[None, :]
    est, se = _estimate(
        params, cfg, seq, [len(prompt)], [seq.shape[1]], rng[None], mc, padded=False
    )
    return (float(est[0]), float(se[0])) if return_stderr else float(est[0])
