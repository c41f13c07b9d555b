"""Bidirectional multi-head attention, one function with interchangeable implementations.

`xla` is the reference (dense einsum, float32 softmax) and runs everywhere; `cudnn` dispatches to
`jax.nn.dot_product_attention(implementation="cudnn")` (GPU, bf16/fp16 only). Both take the same
key-padding mask and segment ids (packed sequences: a query only sees keys of its own document)
and give the same result up to rounding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def allowed_keys(key_mask: jax.Array | None, q_segment_ids: jax.Array | None,
                 kv_segment_ids: jax.Array | None) -> jax.Array | None:
    """Boolean [batch, 1, q_len | 1, kv_len] mask of the keys each query may attend to, or None.

    key_mask: [batch, kv_len] (True = real token); segment ids: [batch, q_len] / [batch, kv_len]
    ints, equal ids = same document (padding has its own id, 0, so it never mixes with text).
    """
    mask = None if key_mask is None else key_mask.astype(bool)[:, None, None, :]
    if q_segment_ids is not None:
        same = q_segment_ids[:, None, :, None] == kv_segment_ids[:, None, None, :]
        mask = same if mask is None else mask & same
    return mask


def attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None = None,
              *, q_segment_ids: jax.Array | None = None,
              kv_segment_ids: jax.Array | None = None, impl: str = "xla") -> jax.Array:
    """Non-causal scaled dot-product attention.

    q: [batch, q_len, heads, head_dim]; k, v: [batch, kv_len, kv_heads, head_dim] (kv_heads
    divides heads: grouped-query attention repeats them). key_mask: [batch, kv_len] bool, True for
    real tokens; masked keys get an additive float32-min bias exactly as the reference, so a row
    whose keys are all masked still produces finite values. q_segment_ids [batch, q_len] and
    kv_segment_ids [batch, kv_len] (both or neither) restrict each query to keys of its own
    segment. Returns [batch, q_len, heads, head_dim].
    """
    if (q_segment_ids is None) != (kv_segment_ids is None):
        raise ValueError("pass both q_segment_ids and kv_segment_ids, or neither")
    mask = allowed_keys(key_mask, q_segment_ids, kv_segment_ids)
    n_rep = q.shape[2] // k.shape[2]
    if n_rep > 1:
        k = jnp.repeat(k, n_rep, axis=2)
        v = jnp.repeat(v, n_rep, axis=2)
    if impl == "cudnn":
        return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")
    if impl != "xla":
        raise ValueError(f"unknown attention impl {impl!r}; use 'xla' or 'cudnn'")
    scale = q.shape[-1] ** -0.5
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    if mask is not None:
        scores = scores + jnp.where(mask, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v, preferred_element_type=jnp.float32).astype(
        v.dtype)
