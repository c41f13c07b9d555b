"""The forward masking process and the training losses of LLaDA, in one place.

Forward process: pick t ~ U(0, 1) per sequence, mask each token independently with probability
p_mask = (1 − ε)·t + ε. The mask predictor sees the noisy sequence (no time input) and the loss
is the cross-entropy on masked positions reweighted by 1/p_mask — an upper bound on the negative
log-likelihood (the ELBO of the paper, Eq. 3).

  pretraining: Σ_masked CE / p_mask ÷ (batch · seq)       (normalised by ALL positions)
  SFT:         Σ_masked CE / p_mask / answer_len(row) ÷ batch, prompt never masked
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from lladax.config import MASK_EPS_DEFAULT as MASK_EPS
from lladax.config import ModelConfig
from lladax.model import transformer


def mask_tokens(
    key: jax.Array,
    tokens: jax.Array,
    mask_id: int,
    eps: float = MASK_EPS,
    *,
    prompt_lengths: jax.Array | None = None,
    stratified: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Sample the forward process.

    tokens [batch, seq] int -> (noisy [batch, seq], p_mask [batch] f32, masked [batch, seq] bool).
    With `prompt_lengths` [batch] (SFT), positions before each row's prompt length are restored
    after noising (the draw itself is the same as in pretraining). `stratified=True` draws the
    batch's t as (u + i/batch) mod 1 from one u: every row's t is still U(0, 1), so the loss stays
    an unbiased ELBO, but the batch covers all noise levels evenly — much lower gradient variance
    at small batch sizes (the paper's i.i.d. t is the default).
    """
    t_key, m_key = jax.random.split(key)
    batch = tokens.shape[0]
    if stratified:
        t = (jax.random.uniform(t_key) + jnp.arange(batch) / batch) % 1.0
    else:
        t = jax.random.uniform(t_key, (batch,))
    p_mask = (1.0 - eps) * t + eps
    masked = jax.random.uniform(m_key, tokens.shape) < p_mask[:, None]
    if prompt_lengths is not None:
        masked &= jnp.arange(tokens.shape[1])[None, :] >= prompt_lengths[:, None]
    noisy = jnp.where(masked, mask_id, tokens)
    return noisy, p_mask, masked


def truncation_mask(key: jax.Array, batch: int, seq_len: int, prob: float) -> jax.Array:
    """[batch, seq] bool: with probability `prob` the whole batch is cut to a length ~ U{1..seq}.

    The paper truncates 1% of pretraining batches to a random length so the model also sees
    short sequences. Static shapes are kept by key-masking and loss-masking the tail instead of
    slicing: the masked-out suffix has no influence on the kept prefix, so it is exact.
    """
    coin_key, len_key = jax.random.split(key)
    length = jax.random.randint(len_key, (), 1, seq_len + 1)
    length = jnp.where(jax.random.uniform(coin_key) < prob, length, seq_len)
    return jnp.broadcast_to(jnp.arange(seq_len)[None, :] < length, (batch, seq_len))


def weighted_token_loss(
    logits: jax.Array, clean: jax.Array, noisy: jax.Array, p_mask: jax.Array, mask_id: int
) -> jax.Array:
    """The per-position loss: CE(logits, clean) / p_mask on masked positions, 0 elsewhere.

    logits [batch, seq, vocab] (the model on `noisy`), clean / noisy [batch, seq] int, p_mask
    [batch] -> [batch, seq] f32.
    """
    masked = noisy == mask_id
    ce = transformer.cross_entropy(logits, clean)
    return jnp.where(masked, ce / p_mask[:, None], 0.0)


def pretrain_loss(
    params: Any,
    cfg: ModelConfig,
    clean: jax.Array,
    noisy: jax.Array,
    p_mask: jax.Array,
    attention_mask: jax.Array | None = None,
    *,
    segment_ids: jax.Array | None = None,
    positions: jax.Array | None = None,
) -> jax.Array:
    """Σ_masked CE/p_mask ÷ number of positions (batch·seq, or the unmasked count if given).

    clean, noisy [batch, seq] int; p_mask [batch]; attention_mask [batch, seq] (1 = real token,
    e.g. from `truncation_mask`, or `segment_ids > 0` for packed rows) excludes positions from
    attention, loss and normaliser; segment_ids/positions [batch, seq] describe packed documents.
    """
    packing = transformer.Packing(segment_ids, positions)
    logits = transformer.apply(params, cfg, noisy, attention_mask, packing=packing)
    token_loss = weighted_token_loss(logits, clean, noisy, p_mask, cfg.mask_token_id)
    if attention_mask is None:
        return jnp.sum(token_loss) / clean.size
    token_loss = jnp.where(attention_mask.astype(bool), token_loss, 0.0)
    return jnp.sum(token_loss) / jnp.sum(attention_mask.astype(jnp.float32))


def sft_loss(
    params: Any,
    cfg: ModelConfig,
    clean: jax.Array,
    noisy: jax.Array,
    p_mask: jax.Array,
    prompt_lengths: jax.Array,
) -> jax.Array:
    """Σ_masked CE/p_mask/answer_len(row) ÷ batch, answer_len = seq − prompt_len (EOS pads count).

    clean [batch, seq] = prompt + answer + EOS padding; noisy must keep the prompt unmasked
    (`mask_tokens(..., prompt_lengths=...)` does); prompt_lengths [batch] int.
    """
    logits = transformer.apply(params, cfg, noisy)
    token_loss = weighted_token_loss(logits, clean, noisy, p_mask, cfg.mask_token_id)
    answer_len = (clean.shape[1] - prompt_lengths).astype(jnp.float32)
    return jnp.sum(jnp.sum(token_loss, axis=1) / answer_len) / clean.shape[0]
