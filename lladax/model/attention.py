"""Multi-head attention, one function with interchangeable implementations.

LLaDA's mask predictor attends bidirectionally. `block=n` makes the attention block-causal: a
query sees every key whose block (position // n) is not after its own — `block=1` is causal (the
autoregressive baseline), `block=ModelConfig.block_size` is block diffusion. `twin=True` is block
diffusion's training layout (BD3-LM): the keys are a noisy copy of the sequence followed by the
clean one, and a noisy query sees its own noisy block and the clean blocks before it, a clean
query the clean blocks up to its own (`block_visible`).

`xla` is the reference (dense einsum, float32 softmax) and runs everywhere; `cudnn` dispatches to
`jax.nn.dot_product_attention(implementation="cudnn")` (GPU, bf16/fp16 only); `splash` is the
Pallas TPU flash kernel shipped with jax (`splash_interpret` runs it in interpret mode on any
backend, for tests); `auto` picks splash on TPU, cudnn on GPU, xla elsewhere. All take the same
key-padding mask and segment ids (packed sequences: a query only sees keys of its own document)
and give the same result up to rounding.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lladax.model.sharding import logical_to_spec

IMPLS = ("auto", "xla", "cudnn", "splash", "splash_interpret")


def block_visible(q_pos, kv_pos, *, block: int, twin: bool = False, half: int = 0):
    """Whether query position q_pos may see key position kv_pos (broadcasting int arrays, numpy
    or jax: the splash kernel evaluates it on tiles).

    Block-causal: kv_pos // block <= q_pos // block. twin: positions [0, half) are the noisy copy
    and [half, 2·half) the clean copy of one sequence; with b(p) = (p mod half) // block, a noisy
    query sees noisy keys of its block and clean keys of earlier blocks, a clean query clean keys
    of blocks up to its own, never a noisy key.
    """
    if not twin:
        return kv_pos // block <= q_pos // block
    q_block, kv_block = (q_pos % half) // block, (kv_pos % half) // block
    q_clean, kv_clean = q_pos >= half, kv_pos >= half
    same = q_block == kv_block
    return (
        (kv_clean & (kv_block < q_block))
        | (kv_clean & q_clean & same)
        | (~q_clean & ~kv_clean & same)
    )


def allowed_keys(
    key_mask: jax.Array | None,
    q_segment_ids: jax.Array | None,
    kv_segment_ids: jax.Array | None,
    *,
    block: int | None = None,
    twin: bool = False,
    q_len: int = 0,
    kv_len: int = 0,
    q_offset: jax.Array | int = 0,
) -> jax.Array | None:
    """Boolean [batch | 1, 1, q_len | 1, kv_len] mask of the keys each query may attend to, or
    None for "all".

    key_mask: [batch, kv_len] (True = real token); segment ids: [batch, q_len] / [batch, kv_len]
    ints, equal ids = same document (padding has its own id, 0, so it never mixes with text).
    block / twin: `block_visible`, query i being at position i + q_offset of the keys.
    """
    mask = None if key_mask is None else key_mask.astype(bool)[:, None, None, :]
    if q_segment_ids is not None:
        same = q_segment_ids[:, None, :, None] == kv_segment_ids[:, None, None, :]
        mask = same if mask is None else mask & same
    if block is not None:
        q_pos = jnp.arange(q_len)[:, None] + q_offset
        seen = block_visible(
            q_pos, jnp.arange(kv_len)[None, :], block=block, twin=twin, half=kv_len // 2
        )
        mask = seen[None, None] if mask is None else mask & seen[None, None]
    return mask


def _at_key_zero(q_offset: jax.Array | int) -> bool:
    return isinstance(q_offset, int) and q_offset == 0


def _auto_impl(dtype: jnp.dtype, tiled: bool, windowed_block_mask: bool) -> str:
    """`impl="auto"`: splash on TPU, cuDNN on GPU, xla elsewhere — and xla where those cannot
    serve: cuDNN is half precision only; splash tiles are 128 positions and its block mask is
    static, so a cached decoding window (traced offset) takes the dense path."""
    impl = {"tpu": "splash", "gpu": "cudnn"}.get(jax.default_backend(), "xla")
    if (impl == "cudnn" and dtype not in (jnp.bfloat16, jnp.float16)) or (
        impl == "splash" and (windowed_block_mask or not tiled)
    ):
        return "xla"
    return impl


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    key_mask: jax.Array | None = None,
    *,
    block: int | None = None,
    twin: bool = False,
    q_offset: jax.Array | int = 0,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    impl: str = "xla",
) -> jax.Array:
    """Scaled dot-product attention, bidirectional unless `block` is set.

    q: [batch, q_len, heads, head_dim]; k, v: [batch, kv_len, kv_heads, head_dim] (kv_heads
    divides heads: grouped-query attention repeats them). Which keys a query sees: key_mask
    [batch, kv_len] bool, True for real tokens (masked keys get an additive float32-min bias
    exactly as the reference, so a row whose keys are all masked still produces finite values);
    `block` (block-causal span, 1 = causal) and `twin` (block diffusion's [noisy | clean]
    training layout): `block_visible`, query i being at position i + q_offset of the keys (a
    window or a cached decode step); q_segment_ids [batch, q_len] and kv_segment_ids
    [batch, kv_len] (both or neither) restrict each query to keys of its own segment. `impl`
    picks the kernel (`IMPLS`). Returns [batch, q_len, heads, head_dim].
    """
    if (q_segment_ids is None) != (kv_segment_ids is None):
        raise ValueError("pass both q_segment_ids and kv_segment_ids, or neither")
    mask = allowed_keys(
        key_mask,
        q_segment_ids,
        kv_segment_ids,
        block=block,
        twin=twin,
        q_len=q.shape[1],
        kv_len=k.shape[1],
        q_offset=q_offset,
    )
    n_rep = q.shape[2] // k.shape[2]
    if n_rep > 1:
        k = jnp.repeat(k, n_rep, axis=2)
        v = jnp.repeat(v, n_rep, axis=2)
    tiled = q.shape[1] % 128 == 0 and k.shape[1] % 128 == 0  # the splash kernel's tiling
    if impl == "auto":
        impl = _auto_impl(q.dtype, tiled, block is not None and not _at_key_zero(q_offset))
    if impl in ("splash", "splash_interpret"):
        if not tiled:
            raise ValueError(
                f"splash attention needs query and key lengths that are multiples "
                f"of 128, got {q.shape[1]} and {k.shape[1]}: pad the sequence or "
                "use attention_impl='auto'"
            )
        if block is not None and not _at_key_zero(q_offset):
            raise ValueError(
                "block-causal splash attention needs queries that start at key 0 "
                "(no cache): use attention_impl='xla' for decoding"
            )
        return _splash(
            q,
            k,
            v,
            key_mask,
            q_segment_ids,
            kv_segment_ids,
            block=block,
            twin=twin,
            interpret=impl == "splash_interpret",
        )
    if impl == "cudnn":
        return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")
    if impl != "xla":
        raise ValueError(f"unknown attention impl {impl!r}; use one of {IMPLS}")
    scale = q.shape[-1] ** -0.5
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    if mask is not None:
        scores = scores + jnp.where(mask, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v, preferred_element_type=jnp.float32).astype(
        v.dtype
    )


def _block(length: int) -> int:
    """Largest kernel tile (512, 256 or 128 positions) dividing `length`."""
    return next(size for size in (512, 256, 128) if length % size == 0)


def _splash_shape_mask(q_len: int, kv_len: int, block: int | None, twin: bool):
    """The splash kernel's mask over one head: full, causal, or `block_visible` computed on
    tiles inside the kernel (never materialised)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_mask as mask_lib,
    )

    if block is None:
        return mask_lib.FullMask((q_len, kv_len))
    if block == 1 and not twin:
        return mask_lib.CausalMask((q_len, kv_len))

    class BlockMask(mask_lib._ComputableMask):  # jax ships no block-causal mask
        def __init__(self):
            visible = functools.partial(block_visible, block=block, twin=twin, half=kv_len // 2)
            super().__init__(shape=(q_len, kv_len), mask_function=visible)

        def __eq__(self, other: object) -> bool:
            return type(other) is type(self) and self.shape == other.shape

        def __hash__(self) -> int:
            return hash((self.shape, block, twin))

    return BlockMask()


def _splash(
    q,
    k,
    v,
    key_mask,
    q_segment_ids,
    kv_segment_ids,
    *,
    block: int | None,
    twin: bool,
    interpret: bool,
):
    """Splash attention: padding and documents become segment ids (keys outside a query's
    segment, or padded, are skipped); a query with no visible key at all is undefined here,
    unlike `xla` which averages all values for it. Runs per shard under the current mesh."""
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as kernel_lib,
    )
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_mask as mask_lib,
    )

    batch, q_len, _, head_dim = q.shape
    kv_len = k.shape[1]
    if q_segment_ids is None:
        q_segment_ids = jnp.ones((batch, q_len), jnp.int32)
        kv_segment_ids = jnp.ones((batch, kv_len), jnp.int32)
    if key_mask is not None:  # -1 matches no query's segment
        kv_segment_ids = jnp.where(key_mask, kv_segment_ids, -1)
    # [batch, heads, len, head_dim]; the kernel does not scale the scores itself.
    q, k, v = (x.swapaxes(1, 2) for x in (q * head_dim**-0.5, k, v))
    bq, bkv = _block(q_len), _block(kv_len)
    # (query, key) tiles of the forward, dkv and dq kernels; each compute tile is its key tile
    sizes = kernel_lib.BlockSizes(
        block_q=bq, block_kv=bkv, block_q_dkv=bq, block_kv_dkv=bkv, block_q_dq=bq, block_kv_dq=bkv
    )

    def local(q, k, v, q_seg, kv_seg):  # shapes are per shard: heads may be split over tensor
        shape_mask = _splash_shape_mask(q_len, kv_len, block, twin)
        mask = mask_lib.MultiHeadMask([shape_mask] * q.shape[1])
        splash = kernel_lib.make_splash_mha(
            mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret
        )
        segments = jax.vmap(kernel_lib.SegmentIds)(
            q_seg.astype(jnp.int32), kv_seg.astype(jnp.int32)
        )
        return jax.vmap(splash)(q, k, v, segment_ids=segments)

    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty:
        qkv_spec = logical_to_spec(("batch", "act_heads", None, None))
        seg_spec = logical_to_spec(("batch", None))
        local = jax.shard_map(
            local, in_specs=(qkv_spec,) * 3 + (seg_spec,) * 2, out_specs=qkv_spec, check_vma=False
        )
    out = local(q, k, v, q_segment_ids, kv_segment_ids)
    return out.swapaxes(1, 2).astype(v.dtype)
