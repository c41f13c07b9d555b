"""The building blocks of the mask predictor in Flax NNX: RMSNorm, rotate-half RoPE and the
pre-norm transformer `Block` (attention masked as the model kind says, SwiGLU MLP), plus the remat
policies that name what a scanned block keeps for the backward pass. `transformer` stacks them.

Every parameter is created by `make_param` with its logical axis names (`sharding.RULES`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from lladax.config import ModelConfig
from lladax.model.attention import attention
from lladax.model.sharding import constrain


def make_param(init, key, shape, dtype, names: tuple[str | None, ...]) -> nnx.Param:
    """`init(key, shape, dtype)` as an nnx.Param annotated with its logical axis `names`."""
    return nnx.Param(init(key, shape, dtype), out_sharding=names, eager_sharding=False)


def normal_init(std: float):
    """An initialiser drawing N(0, std²) in float32, cast to the parameter dtype."""

    def init(key, shape, dtype):
        return (std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)

    return init


def ones_init(key, shape, dtype):
    del key
    return jnp.ones(shape, dtype)


class RMSNorm(nnx.Module):
    """Reference order: normalise in float32, cast back to the input dtype, then scale."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.eps = cfg.rms_norm_eps
        self.weight = make_param(ones_init, None, (cfg.d_model,), cfg.weight_dtype, ("norm",))

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return y.astype(x.dtype) * self.weight[...].astype(x.dtype)


def rope_tables(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos/sin [batch, len, head_dim] float32 tables of rotate-half RoPE at integer `positions`
    [batch, len] (batch may be 1: shared positions broadcast over the batch)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x [batch, len, heads, head_dim], cos/sin [batch | 1, len, head_dim]; rotation in float32,
    result cast back to x.dtype."""
    xf = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    out = xf * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out.astype(x.dtype)


class Block(nnx.Module):
    """Pre-norm transformer block: attention masked as `cfg.attention_block` says (bidirectional,
    causal or block-causal) and a SwiGLU MLP."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, h, kv, hd, f = (
            cfg.d_model,
            cfg.n_heads,
            cfg.n_kv_heads,
            cfg.head_dim,
            cfg.mlp_hidden_size,
        )
        w, init = cfg.weight_dtype, normal_init(cfg.init_std)
        self.cfg = cfg
        self.attn_norm = RMSNorm(cfg, rngs=rngs)
        self.q_proj = make_param(init, rngs.params(), (d, h, hd), w, ("embed", "heads", "kv"))
        self.k_proj = make_param(init, rngs.params(), (d, kv, hd), w, ("embed", "heads", "kv"))
        self.v_proj = make_param(init, rngs.params(), (d, kv, hd), w, ("embed", "heads", "kv"))
        self.attn_out = make_param(init, rngs.params(), (h, hd, d), w, ("heads", "kv", "embed"))
        self.ff_norm = RMSNorm(cfg, rngs=rngs)
        self.ff_proj = make_param(init, rngs.params(), (d, f), w, ("embed", "mlp"))
        self.up_proj = make_param(init, rngs.params(), (d, f), w, ("embed", "mlp"))
        self.ff_out = make_param(init, rngs.params(), (f, d), w, ("mlp", "embed"))

    def __call__(
        self,
        x: jax.Array,
        rope: tuple[jax.Array, jax.Array],
        key_mask: jax.Array | None,
        segment_ids: jax.Array | None = None,
        query_start: jax.Array | None = None,
        query_size: int | None = None,
        *,
        cache: tuple[jax.Array, jax.Array] | None = None,
        cache_start: jax.Array | int = 0,
        twin: bool = False,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """x [batch, len, embed] -> (out [batch, len, embed], (k, v) [batch, kv_len, kv_heads, hd]).

        With `query_size`, only the `query_size` positions from `query_start` are updated
        (keys and values still come from the whole sequence) and the output is
        [batch, query_size, embed]: the last layer of the sampler needs nothing else.
        With `cache` (this layer's k, v [batch, kv_len, ...]), x holds only the positions
        [cache_start, cache_start + len) of a kv_len-long sequence: their fresh keys and values
        overwrite the cache there (the write mask) and the queries attend to the whole result.
        The returned (k, v) are the keys/values every query saw (RoPE applied to k). `twin`: x is
        block diffusion's [noisy | clean] training layout (`attention.block_visible`).
        """
        dt = self.cfg.compute_dtype
        cos, sin = rope
        n = self.attn_norm(x)
        k = jnp.einsum("bld,dhk->blhk", n, self.k_proj[...].astype(dt))
        v = jnp.einsum("bld,dhk->blhk", n, self.v_proj[...].astype(dt))
        k = constrain(apply_rope(k, cos, sin), ("batch", "length", "act_heads", None))
        k, v = checkpoint_name(k, "k_proj"), checkpoint_name(v, "v_proj")
        if cache is not None:  # stale entries elsewhere, fresh ones in the window
            k, v = (
                jax.lax.dynamic_update_slice_in_dim(c, new.astype(c.dtype), cache_start, 1)
                for c, new in zip(cache, (k, v), strict=True)
            )
        x_q, n_q, cos_q, sin_q, seg_q = x, n, cos, sin, segment_ids
        if query_size is not None:
            x_q, n_q, cos_q, sin_q = (
                jax.lax.dynamic_slice_in_dim(a, query_start, query_size, axis=1)
                for a in (x, n, cos, sin)
            )
            if segment_ids is not None:
                seg_q = jax.lax.dynamic_slice_in_dim(segment_ids, query_start, query_size, axis=1)
        q = jnp.einsum("bld,dhk->blhk", n_q, self.q_proj[...].astype(dt))
        q = constrain(apply_rope(q, cos_q, sin_q), ("batch", "length", "act_heads", None))
        q = checkpoint_name(q, "q_proj")
        # Causal / block-causal masks: query j sits at q_offset + j of the key sequence.
        q_offset = (0 if cache is None else cache_start) + (
            0 if query_size is None else query_start
        )
        a = attention(
            q,
            k,
            v,
            key_mask,
            q_segment_ids=seg_q,
            kv_segment_ids=segment_ids,
            impl=self.cfg.attention_impl,
            block=self.cfg.attention_block,
            twin=twin,
            q_offset=q_offset,
        )
        a = checkpoint_name(a, "attn_out")
        h = x_q + jnp.einsum("blhk,hkd->bld", a, self.attn_out[...].astype(dt))
        m = self.ff_norm(h)
        gate = jnp.einsum("bld,df->blf", m, self.ff_proj[...].astype(dt))
        up = jnp.einsum("bld,df->blf", m, self.up_proj[...].astype(dt))
        hidden = constrain(jax.nn.silu(gate) * up, ("batch", "length", "act_mlp"))
        out = h + jnp.einsum("blf,fd->bld", hidden, self.ff_out[...].astype(dt))
        return constrain(out, ("batch", "length", "act_embed")), (k, v)


_QKV = ("q_proj", "k_proj", "v_proj")  # after RoPE: the backward pass reuses them as they are
# The jax.checkpoint policy of each `ModelConfig.remat_policy` but "none" (docs/scaling.md):
# what each scanned layer keeps for the backward pass.
CHECKPOINT_POLICIES = {
    "full": None,  # save nothing, recompute the whole block
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_attn_out": jax.checkpoint_policies.save_only_these_names("attn_out"),
    "save_qkv_proj": jax.checkpoint_policies.save_only_these_names(*_QKV),
    # q, k, v and the attention output go to pinned host memory during the forward pass and
    # come back for the backward: device memory of `full`, recompute of `save_qkv_proj` minus
    # attention, paid for in host<->device transfers that XLA overlaps with the next layer.
    "offload": jax.checkpoint_policies.save_and_offload_only_these_names(
        names_which_can_be_saved=[],
        names_which_can_be_offloaded=[*_QKV, "attn_out"],
        offload_src="device",
        offload_dst="pinned_host",
    ),
}
