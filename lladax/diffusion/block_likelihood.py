"""The masks of the Monte-Carlo ELBO (`likelihood`), drawn block by block: LLaDA's draw is the
one-block case of block diffusion's.

LLaDA's lower-variance estimator (paper, App. B) masks exactly l ~ U{1..T} of the T answer tokens
(never the prompt) and weights the cross-entropy by T/l. Per iteration the b rows use the
stratified counts round_half_even(linspace(k, k + (b−1)·T/b, b)) wrapped into 1..T with one
k ~ U{1..T}, each row masking that many answer positions chosen by a random permutation; p_mask =
count/T (`draw_masks`).

Block diffusion (`ModelConfig.kind="block_diffusion"`) estimates log p(answer | prompt) >=
Σ over blocks of each block's masked-diffusion ELBO given the clean earlier blocks, blocks of
`block_size` aligned from position 0 of prompt + answer as in training. So every block draws
LLaDA's masks on its own (`draw_block_masks`): block i with T_i answer tokens masks l_i ~ U{1..T_i}
of them (stratified over the b rows, its own k_i), p_mask = l_i/T_i on its tokens; a block without
answer tokens masks nothing and contributes nothing. One block (block_size >= the sequence) is
LLaDA's draw number for number: block 0 takes k from LLaDA's uniform and every block ranks its
positions by LLaDA's per-position uniforms; blocks 1, 2, ... take k from a second stream of the
pair's key (`block_uniforms`).

All uniforms are a counter-based hash of the pair's key and each element's flat index, laid out
position (block) outermost: the noise of a position or block never depends on padding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def stratified_counts(k: jax.Array, T: jax.Array, b: int) -> jax.Array:
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


def draw_masks(
    u: jax.Array, T: jax.Array, is_answer: jax.Array, b: int
) -> tuple[jax.Array, jax.Array]:
    """One iteration's noise for one pair (LLaDA) or one block: u [1 + L, b] uniforms, T >= 1
    answer tokens, is_answer [L] bool -> (masked [b, L] bool, p_mask [b] f32).

    u[0, 0] draws k ~ U{1..T}; row j masks exactly counts[j] answer positions: those whose score
    u[1 + p, j] ranks lowest among the answer positions (a uniformly random subset, like
    upstream's randperm). Non-answer positions never rank low enough to be chosen.
    """
    k = 1 + jnp.minimum(jnp.floor(u[0, 0] * T).astype(jnp.int32), T - 1)
    counts = stratified_counts(k, T, b)
    scores = jnp.where(is_answer[None, :], u[1:].T, 2.0)
    rank = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)
    masked = (rank < counts[:, None]) & is_answer[None, :]
    return masked, counts.astype(jnp.float32) / T.astype(jnp.float32)


def draw_block_masks(
    u: jax.Array, u_blocks: jax.Array, is_answer: jax.Array, b: int, block: int
) -> tuple[jax.Array, jax.Array]:
    """`draw_masks` in every block of `block` positions (static; >= L: one block, LLaDA's draw).

    u [1 + L, b] as `draw_masks` takes (u[0, 0]: block 0's k; u[1 + p]: position p's scores),
    u_blocks [n_blocks] (block i >= 1 draws its k from u_blocks[i]), is_answer [L] bool ->
    (masked [b, L] bool, p_mask [b, L] f32, constant within a block).
    """
    L = is_answer.shape[0]
    span = min(block, L)
    n = -(-L // span)
    pad = n * span - L
    answer = jnp.pad(is_answer, (0, pad)).reshape(n, span)
    scores = jnp.pad(u[1:], ((0, pad), (0, 0))).reshape(n, span, -1)
    k_rows = jnp.broadcast_to(u_blocks[:, None], (n, b)).at[0].set(u[0])
    per_block = jnp.concatenate([k_rows[:, None, :], scores], axis=1)  # [n, 1 + span, b]
    T = jnp.maximum(jnp.sum(answer, axis=1, dtype=jnp.int32), 1)  # answer-free: nothing masked
    masked, p_mask = jax.vmap(draw_masks, in_axes=(0, 0, 0, None))(per_block, T, answer, b)
    masked = jnp.moveaxis(masked, 0, 1).reshape(b, n * span)[:, :L]
    return masked, jnp.repeat(p_mask.T, span, axis=1)[:, :L]


def _mix32(x: jax.Array) -> jax.Array:
    """Wellons' `lowbias32` integer hash: a bijection of uint32 with near-ideal avalanche."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def uniforms(key: jax.Array, L: int, n_iter: int, b: int, stream: int = 0) -> jax.Array:
    """[1 + L, n_iter, b] uniforms in [0, 1) for one pair: a counter-based hash of the pair's
    key and each element's flat index (`stream` 0: LLaDA's; others: independent streams).

    The layout — position outermost — makes an element's flat index, hence its value,
    independent of L, so the noise of a position does not depend on padding. A hash rather
    than `jax.random.uniform`: threefry over this shape costs ~3 s of XLA compile per program
    on CPU, the hash almost nothing. The key's 64 bits seed it, so keys still decide all noise.
    """
    seed = jax.random.key_data(key).reshape(-1).astype(jnp.uint32)
    idx = jnp.arange((1 + L) * n_iter * b, dtype=jnp.uint32).reshape(1 + L, n_iter, b)
    h = _mix32(_mix32(idx ^ _mix32(seed[0])) + seed[-1])
    h = _mix32(h ^ jnp.uint32(0x9E3779B9 * (stream + 1) % 2**32))
    return (h >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)


def block_uniforms(key: jax.Array, n_blocks: int, n_iter: int) -> jax.Array:
    """[n_blocks, n_iter] uniforms of stream 1 (block outermost: independent of n_blocks), the
    k-draws of blocks 1, 2, ... (block 0 uses LLaDA's)."""
    return uniforms(key, n_blocks - 1, n_iter, 1, stream=1)[..., 0]
