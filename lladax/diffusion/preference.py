"""Preference optimisation: DPO with ELBO log-likelihoods and VRPO's variance reductions.

DPO (Rafailov et al.) trains a policy π against a frozen reference π_ref on pairs (prompt x,
chosen y_w, rejected y_l) with the loss −log σ(s), the preference score

    s = β · [(log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))].

A masked diffusion model has no exact log π(y|x). LLaDA 1.5 (VRPO, arXiv 2505.19223) replaces each
by a Monte-Carlo ELBO estimate B̂(y|x) and makes the score's estimate usable by reducing its
variance three ways, each a switch here for the ablation:

1. budget: n = n_t × n_yt noisy copies per estimate instead of one;
2. allocation: n_t noise levels ("timesteps") with n_yt masks each; the optimum is n_t = n,
   n_yt = 1 (the variance over noise levels dominates);
3. antithetic sampling: π and π_ref estimate the SAME answer with the SAME noise levels and masks,
   so most of the noise cancels in log π − log π_ref. With π = π_ref the score is then exactly 0.

The estimator inside is LLaDA's lower-variance ELBO (paper App. B; `likelihood`): a noise level
masks exactly l ~ U{1..T} of the T answer positions (never the prompt), a mask is a uniformly
random l-subset, and the masked tokens' log-probs are weighted by T/l:

    B̂(y|x) = 1/(n_t·n_yt) · Σ_j Σ_k (T/l_j) · Σ_{i masked in copy (j,k)} log p(y_i | y_t, x).

l/T plays the role of the paper's t with bounded weights (≤ T). The answer is everything after the
prompt, EOS padding included, as in SFT. A block-diffusion model draws l per block (its block
ELBO: Σ over blocks of each block's estimate given the clean earlier blocks, `losses.
denoiser_logits`). The autoregressive baseline has exact log-probs: the same DPO step uses them
and the noise is unused.

Batches are {"chosen", "rejected": int32 [batch, seq], "prompt_lengths": int32 [batch]}: the two
answers of a pair share the prompt and the row length (`lladax.data.preference`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lladax.config import ModelConfig
from lladax.diffusion import autoregressive, losses
from lladax.model import transformer

METRICS = ("score", "reward_accuracy", "chosen_reward", "rejected_reward", "chosen_nll")


class ElboNoise(NamedTuple):
    """One draw of the estimator's noise for rows [rows, seq]: `masked` [rows, n, seq] bool
    (copy c = j·n_yt + k: level j, mask k) and `weight` [rows, n, seq] f32 (T/l of the position's
    level and block on masked positions, 0 elsewhere)."""

    masked: jax.Array
    weight: jax.Array


def draw_noise(
    key: jax.Array, prompt_lengths: jax.Array, seq: int, n_t: int, n_yt: int, block: int | None
) -> ElboNoise:
    """The noise of `n_t` × `n_yt` noisy copies of each row (prompt_lengths [rows]).

    Each block of `block` positions from position 0 (None: one block, LLaDA) with T answer
    positions draws n_t levels l_j ~ U{1..T} (uniform, independent) and for each n_yt masks:
    the l_j answer positions of lowest uniform score (a uniformly random l_j-subset).
    """
    rows = prompt_lengths.shape[0]
    span = seq if block is None else min(block, seq)
    n_blocks = -(-seq // span)
    padded = n_blocks * span
    level_key, mask_key = jax.random.split(key)
    pos = jnp.arange(padded)
    answer = (pos[None, :] >= prompt_lengths[:, None]) & (pos[None, :] < seq)  # [rows, padded]
    answer = answer.reshape(rows, n_blocks, span)
    T = jnp.sum(answer, axis=-1, dtype=jnp.int32)  # [rows, blocks]
    u = jax.random.uniform(level_key, (rows, n_t, n_blocks))
    level = 1 + jnp.minimum(jnp.floor(u * T[:, None]).astype(jnp.int32), T[:, None] - 1)
    scores = jax.random.uniform(mask_key, (rows, n_t, n_yt, n_blocks, span))
    scores = jnp.where(answer[:, None, None], scores, 2.0)  # never chosen: prompt, past the end
    rank = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)
    masked = (rank < level[:, :, None, :, None]) & answer[:, None, None]
    ratio = T[:, None] / jnp.maximum(level, 1)  # [rows, n_t, blocks]
    weight = jnp.where(masked, ratio[:, :, None, :, None].astype(jnp.float32), 0.0)
    n = n_t * n_yt
    return ElboNoise(
        masked.reshape(rows, n, padded)[..., :seq], weight.reshape(rows, n, padded)[..., :seq]
    )


def elbo(params: Any, cfg: ModelConfig, tokens: jax.Array, noise: ElboNoise) -> jax.Array:
    """B̂(answer | prompt) per row [rows] f32 (module doc): tokens [rows, seq], the answer
    positions being those `noise` can mask; all copies in one forward over [rows·n, seq]."""
    rows, n, seq = noise.masked.shape
    clean = jnp.broadcast_to(tokens[:, None, :], (rows, n, seq)).reshape(rows * n, seq)
    masked = noise.masked.reshape(rows * n, seq)
    noisy = jnp.where(masked, cfg.mask_token_id, clean)
    logits = losses.denoiser_logits(params, cfg, clean, noisy)
    log_p = -transformer.cross_entropy(logits, clean)  # [rows·n, seq]
    weighted = jnp.where(masked, log_p * noise.weight.reshape(rows * n, seq), 0.0)
    return jnp.mean(jnp.sum(weighted, axis=-1).reshape(rows, n), axis=1)


def pair_log_likelihoods(
    params: Any, cfg: ModelConfig, batch: dict[str, jax.Array], noise: ElboNoise | None
) -> tuple[jax.Array, jax.Array]:
    """(chosen, rejected) log-likelihood estimates [batch] f32 in one forward: the ELBO under
    `noise` (drawn for the [2·batch] rows chosen ++ rejected) or, for the autoregressive
    baseline (`cfg.causal`, noise None), the exact log-probs."""
    tokens = jnp.concatenate([batch["chosen"], batch["rejected"]])
    if cfg.causal:
        prompt_lengths = jnp.concatenate([batch["prompt_lengths"]] * 2)
        real = jnp.ones(tokens.shape, bool)
        both = autoregressive.sequence_log_prob(params, cfg, tokens, real, prompt_lengths)
    else:
        both = elbo(params, cfg, tokens, noise)
    return tuple(jnp.split(both, 2))


def pair_noise(
    key: jax.Array, batch: dict[str, jax.Array], cfg: ModelConfig, n_t: int, n_yt: int
) -> ElboNoise | None:
    """The noise of one model's estimates for a batch of pairs ([2·batch] rows: chosen ++
    rejected, independent draws); None for the autoregressive baseline."""
    if cfg.causal:
        return None
    seq = batch["chosen"].shape[1]
    prompt_lengths = jnp.concatenate([batch["prompt_lengths"]] * 2)
    return draw_noise(key, prompt_lengths, seq, n_t, n_yt, cfg.block_size)


def dpo_loss(
    policy: tuple[jax.Array, jax.Array],
    reference: tuple[jax.Array, jax.Array],
    beta: float,
    answer_len: jax.Array | None = None,
    nll_weight: float = 0.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(mean −log σ(s) [+ nll_weight · chosen_nll], metrics) from (chosen, rejected)
    log-likelihoods [batch] of the policy and the reference; metrics: the mean score s, the
    fraction of pairs with s > 0, the mean implicit rewards β·(log π − log π_ref) of chosen and
    rejected answers, and chosen_nll = mean −log π(chosen) per answer token (answer_len [batch];
    0 without): DPO lowers both likelihoods when the answers share most tokens, and
    `nll_weight` > 0 holds the chosen one up (RPO's added SFT term; LLaDA 1.5 uses none)."""
    chosen = beta * (policy[0] - reference[0])
    rejected = beta * (policy[1] - reference[1])
    score = chosen - rejected
    nll = jnp.zeros(()) if answer_len is None else jnp.mean(-policy[0] / answer_len)
    loss = jnp.mean(jax.nn.softplus(-score)) + nll_weight * nll
    metrics = {
        "score": jnp.mean(score),
        "reward_accuracy": jnp.mean((score > 0).astype(jnp.float32)),
        "chosen_reward": jnp.mean(chosen),
        "rejected_reward": jnp.mean(rejected),
        "chosen_nll": nll,
    }
    return loss, metrics


def preference_loss(
    params: Any,
    reference: Any,
    cfg: ModelConfig,
    batch: dict[str, jax.Array],
    key: jax.Array,
    *,
    beta: float,
    n_t: int,
    n_yt: int,
    antithetic: bool,
    nll_weight: float = 0.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The DPO / VRPO loss of a batch of pairs (module doc) and its metrics (`dpo_loss`): the
    policy's estimates under noise from `key`, the reference's under the same noise
    (`antithetic`) or under independent noise. Differentiate with respect to `params` only."""
    policy_key, reference_key = jax.random.split(key)
    noise = pair_noise(policy_key, batch, cfg, n_t, n_yt)
    ref_noise = noise if antithetic else pair_noise(reference_key, batch, cfg, n_t, n_yt)
    policy = pair_log_likelihoods(params, cfg, batch, noise)
    ref = pair_log_likelihoods(reference, cfg, batch, ref_noise)
    ref = jax.tree.map(jax.lax.stop_gradient, ref)
    answer_len = (batch["chosen"].shape[1] - batch["prompt_lengths"]).astype(jnp.float32)
    return dpo_loss(policy, ref, beta, answer_len, nll_weight)
