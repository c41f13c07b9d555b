"""The losses a train step differentiates, chosen by the run: one place that maps a batch to
(loss, metrics) and its gradient.

  pretraining / SFT     `loss_fn`: LLaDA's masked-diffusion bound (per block for block
                        diffusion), or the autoregressive baseline's next-token loss
  preference            `lladax.diffusion.preference.preference_loss`: DPO against the frozen
                        reference params, with VRPO's ELBO estimates for a diffusion model

`loss_and_grad` builds f(params, micro_batch, key) -> ((loss, metrics), grads) for one step,
following a block-size curriculum when there is one. `eval_loss` / `eval_preference` are the
held-out numbers (fixed keys: comparable across steps).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from lladax.config import ModelConfig
from lladax.diffusion import autoregressive, losses, preference
from lladax.model import transformer
from lladax.train import curriculum
from lladax.train.run_config import PreferenceConfig, TrainConfig

__all__ = [
    "eval_loss",
    "eval_preference",
    "flops_multiplier",
    "loss_and_grad",
    "loss_fn",
    "policy_rows",
    "preference_objective",
]


def policy_rows(cfg: ModelConfig, pref: PreferenceConfig | None) -> int:
    """Rows through the policy per batch row: 1, or a preference pair's 2 answers × n = n_t·n_yt
    noisy copies (× 1 for the autoregressive baseline's exact log-probs)."""
    return 1 if pref is None else 2 * (1 if cfg.causal else pref.budget)


def flops_multiplier(cfg: ModelConfig, pref: PreferenceConfig | None) -> float:
    """A step's FLOPs over those of one training pass (forward + backward) on its batch rows:
    1 for pretraining / SFT; a preference step runs `policy_rows` through the policy (forward +
    backward) and as many through the reference (forward, a third of that)."""
    if pref is None:
        return 1.0
    return policy_rows(cfg, pref) * (1.0 + 1.0 / 3.0)


def loss_fn(
    params: Any, cfg: ModelConfig, tc: TrainConfig, batch: dict[str, jax.Array], key: jax.Array
) -> jax.Array:
    """Loss of one micro-batch (see the module doc for the batch kinds) under fresh noise."""
    tokens = batch["tokens"]
    mask_key, trunc_key = jax.random.split(key)
    prompt_lengths = batch.get("prompt_lengths")
    packed = {k: batch[k] for k in ("segment_ids", "positions") if k in batch}
    attention_mask = None
    if "segment_ids" in packed:  # id 0 marks the padding at the end of a packed row
        attention_mask = packed["segment_ids"] > 0
    if tc.truncate_prob > 0 and prompt_lengths is None:
        cut = losses.truncation_mask(trunc_key, *tokens.shape, tc.truncate_prob)
        attention_mask = cut if attention_mask is None else attention_mask & cut
    if cfg.causal:  # the autoregressive baseline: same batches, exact next-token NLL
        return autoregressive.next_token_loss(
            params,
            cfg,
            tokens,
            attention_mask,
            packing=transformer.Packing(**packed),
            prompt_lengths=prompt_lengths,
        )
    noisy, p_mask, _ = losses.mask_tokens(
        mask_key,
        tokens,
        cfg.mask_token_id,
        tc.mask_eps,
        prompt_lengths=prompt_lengths,
        stratified=tc.stratified_t,
        block_size=cfg.block_size,
    )
    if prompt_lengths is not None:
        return losses.sft_loss(params, cfg, tokens, noisy, p_mask, prompt_lengths)
    return losses.pretrain_loss(params, cfg, tokens, noisy, p_mask, attention_mask, **packed)


def preference_objective(
    params: Any,
    reference: Any,
    cfg: ModelConfig,
    pref: PreferenceConfig,
    batch: dict[str, jax.Array],
    key: jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(DPO / VRPO loss, metrics) of a micro-batch of pairs under `pref` (`preference`)."""
    return preference.preference_loss(
        params,
        reference,
        cfg,
        batch,
        key,
        beta=pref.beta,
        n_t=pref.n_t,
        n_yt=pref.n_yt,
        antithetic=pref.antithetic,
        nll_weight=pref.nll_weight,
    )


def _value_and_grad_for(
    cfg: ModelConfig, tc: TrainConfig, pref: PreferenceConfig | None, reference: Any
) -> Callable:
    """f(params, micro_batch, key) -> ((loss, metrics), grads) under `cfg`: `loss_fn` (no
    metrics) or, with `pref`, the preference loss against `reference`."""
    if pref is not None:
        value_and_grad = jax.value_and_grad(preference_objective, has_aux=True)
        return lambda p, b, k: value_and_grad(p, reference, cfg, pref, b, k)
    value_and_grad = jax.value_and_grad(lambda *a: (loss_fn(*a), {}), has_aux=True)
    return lambda params, micro_batch, key: value_and_grad(params, cfg, tc, micro_batch, key)


def loss_and_grad(
    cfg: ModelConfig,
    tc: TrainConfig,
    step: jax.Array,
    seq_len: int,
    pref: PreferenceConfig | None = None,
    reference: Any = None,
) -> tuple[Callable, jax.Array | None]:
    """(f(params, micro_batch, key) -> ((loss, metrics), grads), the block size trained at
    `step` ([] int32; None unless block diffusion)): `loss_fn`, or the preference loss against
    the `reference` params with `pref`.

    With `train.block_curriculum` the block size follows the step: a `lax.switch` over the
    curriculum's distinct sizes, each branch the whole forward and backward pass of the loss with
    `block_size` fixed (static masks; no branch keeps residuals for another).
    """
    plan = curriculum.stages(tc.block_curriculum, cfg)  # () unless block diffusion
    if cfg.block_size is None:
        return _value_and_grad_for(cfg, tc, pref, reference), None
    size = curriculum.size_of_step(plan, step) if plan else jnp.int32(cfg.block_size)
    sizes = curriculum.branch_sizes(plan, seq_len)
    if len(sizes) <= 1:  # every stage computes what the target size computes
        return _value_and_grad_for(cfg, tc, pref, reference), size
    branches = [_value_and_grad_for(cfg.replace(block_size=s), tc, pref, reference) for s in sizes]
    index = curriculum.branch_index(plan, seq_len, step)
    return lambda p, b, k: jax.lax.switch(index, branches, p, b, k), size


@functools.partial(jax.jit, static_argnames=("cfg",))
def eval_loss(
    params: Any,
    cfg: ModelConfig,
    tokens: jax.Array,
    key: jax.Array,
    prompt_lengths: jax.Array | None = None,
) -> jax.Array:
    """Loss on tokens [batch, seq] with noise from `key` (fixed key = comparable numbers): the
    pretraining loss, or with `prompt_lengths` [batch] the SFT loss; for an autoregressive model
    the exact next-token loss (the key is unused)."""
    if cfg.causal:
        return autoregressive.next_token_loss(params, cfg, tokens, prompt_lengths=prompt_lengths)
    noisy, p_mask, _ = losses.mask_tokens(
        key, tokens, cfg.mask_token_id, prompt_lengths=prompt_lengths, block_size=cfg.block_size
    )
    if prompt_lengths is not None:
        return losses.sft_loss(params, cfg, tokens, noisy, p_mask, prompt_lengths)
    return losses.pretrain_loss(params, cfg, tokens, noisy, p_mask)


@functools.partial(jax.jit, static_argnames=("cfg", "pref"))
def eval_preference(
    params: Any,
    reference: Any,
    cfg: ModelConfig,
    pref: PreferenceConfig,
    batch: dict[str, jax.Array],
    key: jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(preference loss, metrics) of a batch of pairs with noise from `key` (fixed key =
    comparable numbers across steps)."""
    return preference_objective(params, reference, cfg, pref, batch, key)
