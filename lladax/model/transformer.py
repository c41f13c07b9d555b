"""The LLaDA mask predictor: a bidirectional LLaMA-style transformer in Flax NNX.

NNX is used for definition only. `init_params` returns a plain nested dict of arrays; every entry
point (`apply`, `forward`) is a pure function of that pytree that `nnx.merge`s the module inside.

Parameter layout (HF name -> lladax path, shape; see convert.py for the mapping):
  wte            [vocab, embed]               model.transformer.wte.weight
  blocks.*       stacked with a leading [layers] axis, scanned with `lax.scan` under remat
    attn_norm    [embed]                       blocks.i.attn_norm.weight
    q/k/v        [embed, heads, head_dim]      blocks.i.{q,k,v}_proj.weight (transposed, split)
    attn_out     [heads, head_dim, embed]      blocks.i.attn_out.weight
    ff_norm      [embed]                       blocks.i.ff_norm.weight
    ff_proj/up   [embed, mlp]                  blocks.i.{ff_proj,up_proj}.weight (gate gets SiLU)
    ff_out       [mlp, embed]                  blocks.i.ff_out.weight (MLP down projection)
  ln_f           [embed]                       model.transformer.ln_f.weight
  lm_head        [embed, vocab]                model.transformer.ff_out.weight (untied)
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from lladax.config import ModelConfig
from lladax.model.attention import attention
from lladax.model.sharding import constrain, tree_shardings

Params = dict[str, Any]


class KVCache(NamedTuple):
    """Keys (RoPE applied) and values of every layer over a whole sequence, from `apply(...,
    return_cache=True)`: k, v [layers, batch, len, kv_heads, head_dim] in the compute dtype."""

    k: jax.Array
    v: jax.Array


def _param(init, key, shape, dtype, names: tuple[str | None, ...]) -> nnx.Param:
    return nnx.Param(init(key, shape, dtype), out_sharding=names, eager_sharding=False)


def _normal(std: float):
    def init(key, shape, dtype):
        return (std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)

    return init


def _ones(key, shape, dtype):
    del key
    return jnp.ones(shape, dtype)


class RMSNorm(nnx.Module):
    """Reference order: normalise in float32, cast back to the input dtype, then scale."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.eps = cfg.rms_norm_eps
        self.weight = _param(_ones, None, (cfg.d_model,), cfg.weight_dtype, ("norm",))

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
    """Pre-norm transformer block with non-causal attention and a SwiGLU MLP."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, h, kv, hd, f = (
            cfg.d_model,
            cfg.n_heads,
            cfg.n_kv_heads,
            cfg.head_dim,
            cfg.mlp_hidden_size,
        )
        w, init = cfg.weight_dtype, _normal(cfg.init_std)
        self.cfg = cfg
        self.attn_norm = RMSNorm(cfg, rngs=rngs)
        self.q_proj = _param(init, rngs.params(), (d, h, hd), w, ("embed", "heads", "kv"))
        self.k_proj = _param(init, rngs.params(), (d, kv, hd), w, ("embed", "heads", "kv"))
        self.v_proj = _param(init, rngs.params(), (d, kv, hd), w, ("embed", "heads", "kv"))
        self.attn_out = _param(init, rngs.params(), (h, hd, d), w, ("heads", "kv", "embed"))
        self.ff_norm = RMSNorm(cfg, rngs=rngs)
        self.ff_proj = _param(init, rngs.params(), (d, f), w, ("embed", "mlp"))
        self.up_proj = _param(init, rngs.params(), (d, f), w, ("embed", "mlp"))
        self.ff_out = _param(init, rngs.params(), (f, d), w, ("mlp", "embed"))

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
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """x [batch, len, embed] -> (out [batch, len, embed], (k, v) [batch, kv_len, kv_heads, hd]).

        With `query_size`, only the `query_size` positions from `query_start` are updated
        (keys and values still come from the whole sequence) and the output is
        [batch, query_size, embed]: the last layer of the sampler needs nothing else.
        With `cache` (this layer's k, v [batch, kv_len, ...]), x holds only the positions
        [cache_start, cache_start + len) of a kv_len-long sequence: their fresh keys and values
        overwrite the cache there (the write mask) and the queries attend to the whole result.
        The returned (k, v) are the keys/values every query saw (RoPE applied to k).
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
        # Causal (autoregressive baseline): query j sits at q_offset + j of the key sequence.
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
            causal=self.cfg.causal,
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
_REMAT_POLICIES = {  # what each scanned layer keeps for the backward pass (docs/scaling.md)
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


class LLaDA(nnx.Module):
    """Embedding -> n_layers scanned Blocks -> RMSNorm -> untied LM head."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.wte = _param(
            _normal(cfg.init_std),
            rngs.params(),
            (cfg.vocab_size, cfg.d_model),
            cfg.weight_dtype,
            ("vocab", "embed"),
        )

        @nnx.split_rngs(splits=cfg.n_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_blocks(rngs: nnx.Rngs) -> Block:
            return Block(cfg, rngs=rngs)

        self.blocks = make_blocks(rngs)
        self.ln_f = RMSNorm(cfg, rngs=rngs)
        self.lm_head = _param(
            _normal(cfg.init_std),
            rngs.params(),
            (cfg.d_model, cfg.vocab_size),
            cfg.weight_dtype,
            ("embed", "vocab"),
        )

    def __call__(
        self,
        tokens: jax.Array,
        attention_mask: jax.Array | None = None,
        *,
        segment_ids: jax.Array | None = None,
        positions: jax.Array | None = None,
        query_start: jax.Array | int = 0,
        query_size: int | None = None,
        cache: KVCache | None = None,
        cache_start: jax.Array | int = 0,
        return_cache: bool = False,
    ) -> jax.Array | tuple[jax.Array, KVCache]:
        cfg = self.cfg
        if cache is not None and segment_ids is not None:
            raise ValueError("a cached forward takes no segment_ids")
        h = jnp.take(self.wte[...], tokens, axis=0).astype(cfg.compute_dtype)
        h = constrain(h, ("batch", "length", "act_embed"))
        if positions is None:  # a cached forward's tokens start at cache_start
            positions = (cache_start + jnp.arange(tokens.shape[1]))[None, :]
        rope = rope_tables(positions, cfg.head_dim, cfg.rope_theta)
        key_mask = None if attention_mask is None else attention_mask.astype(bool)
        block_def, block_state = nnx.split(self.blocks)
        caches = None if cache is None else (cache.k, cache.v)

        def layer(x, state, layer_cache, **kwargs):
            out, kv = nnx.merge(block_def, state)(
                x, rope, key_mask, segment_ids, cache=layer_cache, cache_start=cache_start, **kwargs
            )
            return out, (kv if return_cache else None)

        def scan_body(x, inputs):
            return layer(x, *inputs)

        if cfg.remat_policy != "none":
            scan_body = jax.checkpoint(
                scan_body, policy=_REMAT_POLICIES[cfg.remat_policy], prevent_cse=False
            )
        if query_size is None:
            h, kv = jax.lax.scan(scan_body, h, (block_state, caches))
        else:  # all layers but the last see every position; the last only the query window

            def inputs(i):  # index in place: slicing the stack first would copy it
                return jax.tree.map(
                    lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False),
                    (block_state, caches),
                )

            h, kv = jax.lax.scan(
                lambda x, i: scan_body(x, inputs(i)), h, jnp.arange(cfg.n_layers - 1)
            )
            h, kv_last = layer(
                h,
                *inputs(cfg.n_layers - 1),
                query_start=jnp.asarray(query_start, jnp.int32),
                query_size=query_size,
            )
            if return_cache:
                kv = jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]), kv, kv_last)
        h = self.ln_f(h)
        logits = jnp.einsum(
            "bld,dv->blv",
            h,
            self.lm_head[...].astype(cfg.compute_dtype),
            preferred_element_type=jnp.float32,
        )
        logits = constrain(logits, ("batch", "length", "act_vocab"))
        return (logits, KVCache(*kv)) if return_cache else logits


@functools.lru_cache(maxsize=32)
def _abstract_model(cfg: ModelConfig) -> tuple[nnx.GraphDef, nnx.State]:
    # Built outside any mesh context: the logical names in the metadata are not mesh axes.
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), ())):
        return nnx.split(nnx.eval_shape(lambda: LLaDA(cfg, rngs=nnx.Rngs(0))))


def graphdef(cfg: ModelConfig) -> nnx.GraphDef:
    """The (static) graph of the model for `cfg`, built abstractly (nothing allocated)."""
    return _abstract_model(cfg)[0]


def abstract_params(cfg: ModelConfig) -> Params:
    """ShapeDtypeStructs of the params pytree, without allocating."""
    return nnx.to_pure_dict(_abstract_model(cfg)[1])


def param_logical_axes(cfg: ModelConfig) -> Params:
    """Same tree as the params, each leaf a tuple of logical axis names."""
    specs = nnx.to_pure_dict(nnx.get_partition_spec(_abstract_model(cfg)[1]))
    return jax.tree.map(tuple, specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))


def init_params(cfg: ModelConfig, key: jax.Array, mesh: jax.sharding.Mesh | None = None) -> Params:
    """Random params; with `mesh`, each parameter is created directly in its sharded layout."""

    def init(key):
        with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), ())):
            return nnx.to_pure_dict(nnx.split(LLaDA(cfg, rngs=nnx.Rngs(params=key)))[1])

    if mesh is None:
        return jax.jit(init)(key)
    return jax.jit(init, out_shardings=tree_shardings(mesh, param_logical_axes(cfg)))(key)


def apply(
    params: Params,
    cfg: ModelConfig,
    tokens: jax.Array,
    attention_mask: jax.Array | None = None,
    *,
    segment_ids: jax.Array | None = None,
    positions: jax.Array | None = None,
    query_start: jax.Array | int = 0,
    query_size: int | None = None,
    cache: KVCache | None = None,
    cache_start: jax.Array | int = 0,
    return_cache: bool = False,
):
    """Traceable forward pass: tokens [batch, len] int -> logits [batch, len, vocab] float32.

    `attention_mask` [batch, len] (1 = real token) masks padded keys. Packed rows pass
    `segment_ids` [batch, len] (a token attends only to tokens with the same id; 0 = padding) and
    `positions` [batch, len] (RoPE positions, restarting at 0 in each document); the logits of
    each document then equal those of the document run alone. With `query_size`, logits are only
    computed for positions [query_start, query_size + query_start) of `tokens`
    ([batch, query_size, vocab]); the result equals the same slice of the full forward.

    KV caching (the fast sampler): `return_cache=True` also returns a `KVCache` of the whole
    sequence, (logits, cache). Given `cache` [layers, batch, kv_len, ...], `tokens` [batch, len]
    are only the positions [cache_start, cache_start + len) of a kv_len-long sequence (RoPE
    positions default to those) and `attention_mask` is [batch, kv_len]: every layer writes the
    fresh keys/values of those positions into its cache slice and attends to the whole of it;
    other positions keep their (possibly stale) cached keys/values. Shapes are static, so one
    compiled program serves any `cache_start`. With a cache that is exact for the current
    sequence, the logits equal the same slice of the uncached forward. Both together return the
    cache with those positions written (the autoregressive decoder's step).

    `cfg.kind == "autoregressive"` makes every layer causal (the baseline of `autoregressive.py`).
    """
    return nnx.merge(graphdef(cfg), params)(
        tokens,
        attention_mask,
        segment_ids=segment_ids,
        positions=positions,
        query_start=query_start,
        query_size=query_size,
        cache=cache,
        cache_start=cache_start,
        return_cache=return_cache,
    )


@functools.partial(jax.jit, static_argnames=("cfg",))
def _forward_jit(params, cfg, tokens, attention_mask, segment_ids, positions):
    return apply(params, cfg, tokens, attention_mask, segment_ids=segment_ids, positions=positions)


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Natural-log CE over the full vocabulary: logits [..., vocab] f32, targets [...] -> [...]."""
    logits = logits.astype(jnp.float32)
    logz = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return logz - target_logit


def check_tokens(tokens: Any, cfg: ModelConfig, name: str = "tokens") -> None:
    """Raise a one-line ValueError if concrete token ids fall outside [0, vocab_size)."""
    if isinstance(tokens, jax.core.Tracer):
        return
    arr = np.asarray(tokens)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be [batch, seq] integers, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be integer token ids, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= cfg.vocab_size):
        raise ValueError(
            f"{name} contain id {int(arr.max() if arr.max() >= cfg.vocab_size else arr.min())} "
            f"outside the model vocabulary [0, {cfg.vocab_size}): the tokenizer does not match "
            "this checkpoint"
        )


def forward(
    params: Params,
    cfg: ModelConfig,
    tokens: jax.Array,
    attention_mask: jax.Array | None = None,
    *,
    segment_ids: jax.Array | None = None,
    positions: jax.Array | None = None,
) -> jax.Array:
    """Jitted forward pass with input validation: [batch, len] -> logits [batch, len, vocab] f32.

    `attention_mask`, `segment_ids` and `positions` are optional [batch, len] arrays (see `apply`).
    """
    check_tokens(tokens, cfg)
    tokens = jnp.asarray(tokens, jnp.int32)
    extras = {"attention_mask": attention_mask, "segment_ids": segment_ids, "positions": positions}
    for name, value in extras.items():
        if value is not None:
            extras[name] = jnp.asarray(value)
            if extras[name].shape != tokens.shape:
                raise ValueError(
                    f"{name} shape {extras[name].shape} != tokens shape "
                    f"{tokens.shape}: pass one entry per token"
                )
    return _forward_jit(
        params, cfg, tokens, extras["attention_mask"], extras["segment_ids"], extras["positions"]
    )
