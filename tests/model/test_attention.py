"""Every attention implementation against the dense XLA reference: no mask, key padding,
packed segments, gradients, and sharded over the 8-device mesh (splash runs in interpret mode
on CPU; cuDNN only where a GPU is present)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lladax.model import sharding, transformer
from lladax.model.attention import attention

B, L, H, D = 4, 128, 4, 16


@pytest.fixture(scope="module")
def qkv():
    rng = np.random.default_rng(0)
    return tuple(jnp.asarray(rng.normal(size=(B, L, H, D)), jnp.float32) for _ in range(3))


def masks():
    rng = np.random.default_rng(1)
    segments = jnp.asarray(np.repeat([[1] * 50 + [2] * 60 + [0] * 18], B, 0))
    return {
        "none": {},
        "key_mask": {"key_mask": jnp.asarray(rng.random((B, L)) > 0.2)},
        "segments": {"q_segment_ids": segments, "kv_segment_ids": segments},
    }


@pytest.mark.parametrize("case", ["none", "key_mask", "segments"])
def test_splash_matches_dense(qkv, case):
    kwargs = masks()[case]
    ref = attention(*qkv, impl="xla", **kwargs)
    out = attention(*qkv, impl="splash_interpret", **kwargs)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5)


def test_splash_sharded_with_gradient(qkv):
    q, k, v = qkv
    kwargs = masks()["segments"]
    with jax.set_mesh(sharding.make_mesh(data=2, fsdp=2, tensor=2)):
        grads = [
            jax.jit(
                jax.grad(lambda q, impl=impl: (attention(q, k, v, impl=impl, **kwargs) ** 2).sum())
            )(q)
            for impl in ("xla", "splash_interpret")
        ]
    np.testing.assert_allclose(np.asarray(grads[1]), np.asarray(grads[0]), atol=1e-4)


def test_model_with_splash_matches_dense(tiny_llada):
    cfg, params = tiny_llada
    tokens = np.random.default_rng(2).integers(5, cfg.vocab_size, size=(2, 128))
    mask = np.ones_like(tokens)
    mask[1, :5] = 0  # left padding
    dense = transformer.forward(params, cfg, tokens, mask)
    splash_cfg = dataclasses.replace(cfg, attention_impl="splash_interpret")
    splash = transformer.forward(params, splash_cfg, tokens, mask)
    np.testing.assert_allclose(np.asarray(splash)[:, 5:], np.asarray(dense)[:, 5:], atol=5e-5)


def test_auto_and_unknown(qkv):
    if jax.default_backend() == "cpu":
        np.testing.assert_array_equal(
            np.asarray(attention(*qkv, impl="auto")), np.asarray(attention(*qkv, impl="xla"))
        )
    with pytest.raises(ValueError, match="unknown attention impl 'flash'"):
        attention(*qkv, impl="flash")
    with pytest.raises(ValueError, match="multiples of 128, got 100 and 100"):
        attention(*(x[:, :100] for x in qkv), impl="splash_interpret")
    with pytest.raises(ValueError, match="both q_segment_ids and kv_segment_ids"):
        attention(*qkv, q_segment_ids=jnp.ones((B, L), jnp.int32))


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs a GPU")
def test_cudnn_matches_dense(qkv):
    q, k, v = (x.astype(jnp.bfloat16) for x in qkv)
    for kwargs in masks().values():
        ref = attention(q, k, v, impl="xla", **kwargs).astype(jnp.float32)
        out = attention(q, k, v, impl="cudnn", **kwargs).astype(jnp.float32)
        np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=2e-2)


def _visible_by_rule(q_len: int, kv_len: int, block: int, twin: bool) -> np.ndarray:
    """The block diffusion masks written out position by position (an independent spelling)."""
    out = np.zeros((q_len, kv_len), bool)
    half = kv_len // 2
    for i in range(q_len):
        for j in range(kv_len):
            if not twin:
                out[i, j] = j // block <= i // block
                continue
            qi_clean, kj_clean = i >= half, j >= half
            bi, bj = (i - half * qi_clean) // block, (j - half * kj_clean) // block
            if qi_clean:
                out[i, j] = kj_clean and bj <= bi
            else:
                out[i, j] = (kj_clean and bj < bi) or (not kj_clean and bj == bi)
    return out


@pytest.mark.parametrize(("block", "twin"), [(1, False), (3, False), (16, False), (4, True)])
def test_block_masks_follow_the_rule(block, twin):
    from lladax.model.attention import allowed_keys

    mask = allowed_keys(None, None, None, block=block, twin=twin, q_len=24, kv_len=24)
    np.testing.assert_array_equal(np.asarray(mask[0, 0]), _visible_by_rule(24, 24, block, twin))
    # a query window (the cached sampler's block) sees the same rows of the mask
    window = allowed_keys(None, None, None, block=block, q_len=8, kv_len=24, q_offset=8)
    if not twin:
        np.testing.assert_array_equal(
            np.asarray(window[0, 0]), _visible_by_rule(24, 24, block, 0)[8:16]
        )


@pytest.mark.parametrize(("block", "twin"), [(32, False), (1, False), (16, True)])
def test_block_causal_splash_matches_dense(qkv, block, twin):
    kwargs = masks()["segments"]
    ref = attention(*qkv, impl="xla", block=block, twin=twin, **kwargs)
    out = attention(*qkv, impl="splash_interpret", block=block, twin=twin, **kwargs)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5)
