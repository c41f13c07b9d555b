"""The LLaDA mask predictor: a bidirectional LLaMA-style transformer in Flax NNX, the `layers`
blocks stacked and scanned, and its entry points.

NNX is used for definition only. `init_params` returns a plain nested dict of arrays; every entry
point (`apply`, `forward`) is a pure function of that pytree that `nnx.merge`s the module inside.

Parameter layout (HF name -> lladax path, shape; the mapping is `store/hf_format.py`):
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

from lladax.config import ModelConfig
from lladax.model.layers import (
    CHECKPOINT_POLICIES,
    Block,
    RMSNorm,
    make_param,
    normal_init,
    rope_tables,
)
from lladax.model.sharding import constrain, tree_shardings

Params = dict[str, Any]


class KVCache(NamedTuple):
    """Keys (RoPE applied) and values of every layer over a whole sequence, from `apply(...,
    return_cache=True)`: k, v [layers, batch, len, kv_heads, head_dim] in the compute dtype."""

    k: jax.Array
    v: jax.Array


class Packing(NamedTuple):
    """How documents sit in token rows [batch, len] (the data pipeline's `pack=True` batches).

    segment_ids [batch, len] int: a token attends only to tokens with the same id (0 = padding);
    None: one document per row. positions [batch, len] int: RoPE positions, restarting at 0 in
    each document; None: 0, 1, ... along the row (from `cache_start` in a cached forward).
    """

    segment_ids: jax.Array | None = None
    positions: jax.Array | None = None


UNPACKED = Packing()  # one document per row


class LLaDA(nnx.Module):
    """Embedding -> n_layers Blocks (stacked on a leading [layers] axis) -> RMSNorm -> untied LM
    head. The definition only: `apply` runs it."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        v, d, w, init = cfg.vocab_size, cfg.d_model, cfg.weight_dtype, normal_init(cfg.init_std)
        self.wte = make_param(init, rngs.params(), (v, d), w, ("vocab", "embed"))

        @nnx.split_rngs(splits=cfg.n_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_blocks(rngs: nnx.Rngs) -> Block:
            return Block(cfg, rngs=rngs)

        self.blocks = make_blocks(rngs)
        self.ln_f = RMSNorm(cfg, rngs=rngs)
        self.lm_head = make_param(init, rngs.params(), (d, v), w, ("embed", "vocab"))


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


def _scan_layers(
    layer: Any,
    cfg: ModelConfig,
    h: jax.Array,
    stacked: tuple[Any, Any],
    query_start: jax.Array | int,
    query_size: int | None,
    return_cache: bool,
) -> tuple[jax.Array, Any]:
    """h [batch, len, embed] through every layer, scanned (under remat unless the policy is
    "none"): `layer(x, block_state, layer_cache, **window)` -> (x, kv or None) runs one layer
    whose state and cache are sliced from `stacked` = (block states, caches or None), each with a
    leading [layers] axis. With `query_size`, all layers but the last see every position and the
    last only the query window. Returns (h, the layers' stacked (k, v) or None)."""

    def scan_body(x, inputs):
        return layer(x, *inputs)

    if cfg.remat_policy != "none":
        scan_body = jax.checkpoint(
            scan_body, policy=CHECKPOINT_POLICIES[cfg.remat_policy], prevent_cse=False
        )
    if query_size is None:
        return jax.lax.scan(scan_body, h, stacked)

    def inputs(i):  # index in place: slicing the stack first would copy it
        return jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False), stacked)

    h, kv = jax.lax.scan(lambda x, i: scan_body(x, inputs(i)), h, jnp.arange(cfg.n_layers - 1))
    if not isinstance(query_start, int):  # a Python int stays static (splash needs that)
        query_start = jnp.asarray(query_start, jnp.int32)
    h, kv_last = layer(h, *inputs(cfg.n_layers - 1), query_start=query_start, query_size=query_size)
    if return_cache:
        kv = jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]), kv, kv_last)
    return h, kv


def apply(
    params: Params,
    cfg: ModelConfig,
    tokens: jax.Array,
    attention_mask: jax.Array | None = None,
    *,
    packing: Packing = UNPACKED,
    query_start: jax.Array | int = 0,
    query_size: int | None = None,
    cache: KVCache | None = None,
    cache_start: jax.Array | int = 0,
    return_cache: bool = False,
    twin: bool = False,
):
    """Traceable forward pass: tokens [batch, len] int -> logits [batch, len, vocab] float32.

    `attention_mask` [batch, len] (1 = real token) masks padded keys. Packed rows pass their
    `packing` (segment ids and restarting positions); the logits of each document then equal
    those of the document run alone. With `query_size`, logits are only computed for positions
    [query_start, query_size + query_start) of `tokens` ([batch, query_size, vocab]); the result
    equals the same slice of the full forward.

    KV caching (the fast sampler): `return_cache=True` also returns a `KVCache` of the whole
    sequence, (logits, cache). Given `cache` [layers, batch, kv_len, ...], `tokens` [batch, len]
    are only the positions [cache_start, cache_start + len) of a kv_len-long sequence (RoPE
    positions default to those) and `attention_mask` is [batch, kv_len]: every layer writes the
    fresh keys/values of those positions into its cache slice and attends to the whole of it;
    other positions keep their (possibly stale) cached keys/values. Shapes are static, so one
    compiled program serves any `cache_start`. With a cache that is exact for the current
    sequence, the logits equal the same slice of the uncached forward. Both together return the
    cache with those positions written (the autoregressive decoder's step).

    `cfg.kind == "autoregressive"` makes every layer causal (the baseline of `autoregressive.py`),
    `"block_diffusion"` block-causal (`cfg.block_size`). `twin=True` (block diffusion training,
    `losses`): tokens [batch, 2L] are a noisy sequence followed by its clean copy, attending as
    `attention.block_visible` says; positions default to 0..L-1 for each copy and `packing`,
    `attention_mask` cover all 2L columns.
    """
    segment_ids, positions = packing
    if cache is not None and segment_ids is not None:
        raise ValueError("a cached forward takes no segment_ids")
    if twin and (cache is not None or cfg.attention_block is None):
        raise ValueError("twin=True is block diffusion's uncached training forward")
    if twin and positions is None:
        positions = (jnp.arange(tokens.shape[1]) % (tokens.shape[1] // 2))[None, :]
    model = nnx.merge(graphdef(cfg), params)
    h = jnp.take(model.wte[...], tokens, axis=0).astype(cfg.compute_dtype)
    h = constrain(h, ("batch", "length", "act_embed"))
    if positions is None:  # a cached forward's tokens start at cache_start
        positions = (cache_start + jnp.arange(tokens.shape[1]))[None, :]
    rope = rope_tables(positions, cfg.head_dim, cfg.rope_theta)
    key_mask = None if attention_mask is None else attention_mask.astype(bool)
    block_def, block_state = nnx.split(model.blocks)

    def layer(x, state, layer_cache, **window):
        out, kv = nnx.merge(block_def, state)(
            x,
            rope,
            key_mask,
            segment_ids,
            cache=layer_cache,
            cache_start=cache_start,
            twin=twin,
            **window,
        )
        return out, (kv if return_cache else None)

    caches = None if cache is None else (cache.k, cache.v)
    h, kv = _scan_layers(
        layer, cfg, h, (block_state, caches), query_start, query_size, return_cache
    )
    logits = jnp.einsum(
        "bld,dv->blv",
        model.ln_f(h),
        model.lm_head[...].astype(cfg.compute_dtype),
        preferred_element_type=jnp.float32,
    )
    logits = constrain(logits, ("batch", "length", "act_vocab"))
    return (logits, KVCache(*kv)) if return_cache else logits


@functools.partial(jax.jit, static_argnames=("cfg",))
def _forward_jit(params, cfg, tokens, attention_mask, packing):
    return apply(params, cfg, tokens, attention_mask, packing=packing)


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

    `attention_mask`, `segment_ids` and `positions` are optional [batch, len] arrays (see `apply`
    and `Packing`).
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
    packing = Packing(extras["segment_ids"], extras["positions"])
    return _forward_jit(params, cfg, tokens, extras["attention_mask"], packing)
