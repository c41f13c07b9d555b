"""The forward masking process and the training losses of LLaDA, in one place.

Forward process: pick t ~ U(0, 1) per sequence, mask each token independently with probability
p_mask = (1 − ε)·t + ε. The mask predictor sees the noisy sequence (no time input) and the loss
is the cross-entropy on masked positions reweighted by 1/p_mask — an upper bound on the negative
log-likelihood (the ELBO of the paper, Eq. 3).

  pretraining: Σ_masked CE / p_mask ÷ (batch · seq)       (normalised by ALL positions)
  SFT:         Σ_masked CE / p_mask / answer_len(row) ÷ batch, prompt never masked

Block diffusion (`ModelConfig.kind="block_diffusion"`, BD3-LM): the sequence is cut into blocks
of `block_size` from position 0 and EVERY BLOCK draws its own t (`mask_tokens(block_size=)`:
p_mask is then per token [batch, seq], constant within a block). Per-block t makes each block an
independent masked-diffusion problem given its clean prefix, exactly the conditional the block
sampler solves, and the loss stays an unbiased bound: Σ over blocks of each block's LLaDA ELBO.
No clipped schedule: t ~ U(0, 1) with LLaDA's ε floor, so block_size = seq is LLaDA's loss. The
masked tokens of block b are predicted from noisy block b and the clean blocks < b in ONE forward
over the noisy and clean copies side by side ([batch, 2·seq], `transformer.apply(twin=True)`);
the LM head runs on the noisy half only. A single block (block_size >= seq) has no clean prefix
to attend to: the plain forward on the noisy copy is the same computation at half the cost.
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
    block_size: int | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Sample the forward process.

    tokens [batch, seq] int -> (noisy [batch, seq], p_mask [batch] f32, masked [batch, seq] bool).
    With `block_size` (block diffusion) each block of that many positions from position 0 draws
    its own t and p_mask is [batch, seq] (constant within a block); block_size >= seq is one t
    per row, drawn as without it.
    With `prompt_lengths` [batch] (SFT), positions before each row's prompt length are restored
    after noising (the draw itself is the same as in pretraining). `stratified=True` draws the
    batch's t as (u + i/batch) mod 1 from one u: every row's t is still U(0, 1), so the loss stays
    an unbiased ELBO, but the batch covers all noise levels evenly — much lower gradient variance
    at small batch sizes (the paper's i.i.d. t is the default).
    """
    t_key, m_key = jax.random.split(key)
    batch, seq = tokens.shape
    per_block = block_size is not None and block_size < seq
    n_t = batch * (-(-seq // block_size) if per_block else 1)  # noise levels drawn
    if stratified:
        t = (jax.random.uniform(t_key) + jnp.arange(n_t) / n_t) % 1.0
    else:
        t = jax.random.uniform(t_key, (n_t,))
    p_mask = (1.0 - eps) * t + eps
    if per_block:  # [batch, blocks] -> one value per token
        p_mask = jnp.repeat(p_mask.reshape(batch, -1), block_size, axis=1)[:, :seq]
    elif block_size is not None:
        p_mask = jnp.broadcast_to(p_mask[:, None], (batch, seq))
    per_token = p_mask if p_mask.ndim == 2 else p_mask[:, None]
    masked = jax.random.uniform(m_key, tokens.shape) < per_token
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
    [batch] (or [batch, seq] per token: block diffusion) -> [batch, seq] f32.
    """
    masked = noisy == mask_id
    ce = transformer.cross_entropy(logits, clean)
    return jnp.where(masked, ce / (p_mask if p_mask.ndim == 2 else p_mask[:, None]), 0.0)


def denoiser_logits(
    params: Any,
    cfg: ModelConfig,
    clean: jax.Array,
    noisy: jax.Array,
    attention_mask: jax.Array | None = None,
    packing: transformer.Packing = transformer.UNPACKED,
) -> jax.Array:
    """The mask predictor's logits [batch, seq, vocab] for `noisy` [batch, seq].

    LLaDA sees the noisy sequence alone. Block diffusion predicts each block from its noisy self
    and the clean earlier blocks: one twin forward over [noisy | clean] ([batch, 2·seq]; mask,
    segment ids and positions repeated for both copies) with the LM head on the noisy half.
    """
    seq = clean.shape[1]
    if cfg.kind != "block_diffusion" or cfg.block_size >= seq:
        return transformer.apply(params, cfg, noisy, attention_mask, packing=packing)

    def twice(a):
        return None if a is None else jnp.concatenate([a, a], axis=1)

    both = transformer.Packing(*(twice(a) for a in packing))
    return transformer.apply(
        params,
        cfg,
        jnp.concatenate([noisy, clean], axis=1),
        twice(attention_mask),
        packing=both,
        twin=True,
        query_start=0,
        query_size=seq,
    )


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

    clean, noisy [batch, seq] int; p_mask [batch] (block diffusion: [batch, seq], per block);
    attention_mask [batch, seq] (1 = real token,
    e.g. from `truncation_mask`, or `segment_ids > 0` for packed rows) excludes positions from
    attention, loss and normaliser; segment_ids/positions [batch, seq] describe packed documents.
    """
    packing = transformer.Packing(segment_ids, positions)
    logits = denoiser_logits(params, cfg, clean, noisy, attention_mask, packing)
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
    (`mask_tokens(..., prompt_lengths=...)` does); prompt_lengths [batch] int; p_mask as
    `pretrain_loss`'s.
    """
    logits = denoiser_logits(params, cfg, clean, noisy)
    token_loss = weighted_token_loss(logits, clean, noisy, p_mask, cfg.mask_token_id)
    answer_len = (clean.shape[1] - prompt_lengths).astype(jnp.float32)
    return jnp.sum(jnp.sum(token_loss, axis=1) / answer_len) / clean.shape[0]
