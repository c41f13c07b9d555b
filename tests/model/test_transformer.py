"""The mask predictor against the PyTorch reference outputs, and its invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lladax.config import ConfigError, preset
from lladax.model import sharding, transformer
from lladax.store import convert


def test_forward_matches_reference_f32(tiny_llada, golden):
    cfg, params = tiny_llada
    case = golden("forward_plain")
    logits = np.asarray(transformer.forward(params, cfg, case["input_ids"]))
    assert logits.dtype == np.float32 and logits.shape == case["logits"].shape
    assert np.abs(logits - case["logits"]).max() <= 5e-5
    # The stored float64 run is accurate to ~5e-6; we are within 1e-5 of it.
    assert np.abs(logits - case["logits_f64"]).max() <= 1e-5


def test_forward_padded_valid_rows(tiny_llada, golden):
    cfg, params = tiny_llada
    case = golden("forward_padded")
    logits = np.asarray(transformer.forward(params, cfg, case["input_ids"], case["attention_mask"]))
    valid = case["query_valid"]
    assert np.abs(logits - case["logits"])[valid].max() <= 5e-5


def test_left_padding_is_shift_invariant(tiny_llada, golden):
    cfg, params = tiny_llada
    case = golden("forward_padded")
    logits = np.asarray(transformer.forward(params, cfg, case["input_ids"], case["attention_mask"]))
    for row in range(case["input_ids"].shape[0]):
        valid = case["attention_mask"][row].astype(bool)
        alone = transformer.forward(params, cfg, case["input_ids"][row][valid][None])
        np.testing.assert_allclose(logits[row][valid], np.asarray(alone)[0], atol=2e-5)


def test_packed_documents_do_not_see_each_other(tiny_llada):
    """A packed row (segment ids + restarting positions) gives each document the logits it gets
    alone; the query window path agrees with the full path on the same packed row."""
    cfg, params = tiny_llada
    rng = np.random.default_rng(0)
    lengths = [7, 12, 5]
    docs = [rng.integers(5, cfg.vocab_size, size=n) for n in lengths]
    pad = 4
    tokens = np.concatenate([*docs, np.full(pad, cfg.eos_token_id)])[None]
    segment_ids = np.concatenate(
        [np.full(n, i + 1) for i, n in enumerate(lengths)] + [np.zeros(pad, int)]
    )[None]
    positions = np.concatenate([np.arange(n) for n in [*lengths, pad]])[None]
    packed = np.asarray(
        transformer.forward(params, cfg, tokens, segment_ids=segment_ids, positions=positions)
    )[0]
    start = 0
    for doc in docs:
        alone = np.asarray(transformer.forward(params, cfg, doc[None]))[0]
        np.testing.assert_allclose(packed[start : start + len(doc)], alone, atol=2e-5)
        start += len(doc)
    unpacked = np.asarray(transformer.forward(params, cfg, tokens))[0]
    assert np.abs(unpacked[: lengths[0]] - packed[: lengths[0]]).max() > 1e-3  # mask matters
    window = transformer.apply(
        params,
        cfg,
        jnp.asarray(tokens),
        packing=transformer.Packing(jnp.asarray(segment_ids), jnp.asarray(positions)),
        query_start=7,
        query_size=12,
    )
    np.testing.assert_allclose(np.asarray(window)[0], packed[7:19], atol=2e-5)


def test_forward_bf16(tiny_llada_dir, golden):
    cfg, params = convert.load_hf(tiny_llada_dir, jnp.bfloat16)
    assert cfg.dtype == "bfloat16"
    case = golden("forward_bf16")
    logits = np.asarray(transformer.forward(params, cfg, case["input_ids"]))
    ref = case["logits"]
    assert np.abs(logits - ref).max() <= 0.36
    top2 = np.sort(ref, axis=-1)[..., -2:]
    clear = (top2[..., 1] - top2[..., 0]) >= 0.1  # bf16 rounding may flip nearer ties
    agree = logits.argmax(-1) == ref.argmax(-1)
    assert agree[clear].mean() == 1.0


def test_query_window_equals_full_slice(tiny_llada, golden):
    cfg, params = tiny_llada
    tokens = jnp.asarray(golden("forward_plain")["input_ids"])
    full = transformer.apply(params, cfg, tokens)
    window = jax.jit(lambda p, t, s: transformer.apply(p, cfg, t, query_start=s, query_size=8))
    for start in (0, 5, 16):
        np.testing.assert_allclose(
            window(params, tokens, start), full[:, start : start + 8], atol=2e-5
        )


def test_sharded_forward_equals_single_device(tiny_llada, golden):
    cfg, params = tiny_llada
    tokens = golden("forward_plain")["input_ids"]
    expected = transformer.forward(params, cfg, tokens)
    mesh = sharding.make_mesh(data=1, fsdp=2, tensor=4)
    with jax.set_mesh(mesh):
        placed = jax.device_put(
            params, sharding.tree_shardings(mesh, transformer.param_logical_axes(cfg))
        )
        assert tuple(placed["blocks"]["ff_proj"].sharding.spec) == (None, "fsdp", "tensor")
        got = transformer.forward(
            placed, cfg, jax.device_put(tokens, sharding.named_sharding(mesh, ("batch", None)))
        )
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_llada_8b_parameter_count_abstract():
    cfg = preset("llada_8b")
    abstract = transformer.abstract_params(cfg)  # ShapeDtypeStructs: nothing is allocated
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(abstract))
    total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract))
    assert total == cfg.param_count()
    assert round(total / 1e9, 2) == 8.02
    non_embedding = total - 2 * 126464 * 4096
    assert round(non_embedding / 1e9, 2) == 6.98
    shapes = {k: v.shape for k, v in abstract["blocks"].items() if not isinstance(v, dict)}
    assert shapes["q_proj"] == (32, 4096, 32, 128) and shapes["ff_proj"] == (32, 4096, 12288)


def test_token_ids_outside_vocab_rejected(tiny_llada):
    cfg, params = tiny_llada
    with pytest.raises(ValueError, match="outside the model vocabulary"):
        transformer.forward(params, cfg, np.array([[1, 2, cfg.vocab_size]]))
    with pytest.raises(ValueError, match="outside the model vocabulary"):
        transformer.forward(params, cfg, np.array([[-1, 2]]))
    with pytest.raises(ValueError, match="attention_mask shape"):
        transformer.forward(params, cfg, np.array([[1, 2]]), np.ones((1, 3)))


def test_block_diffusion_forward_is_block_causal():
    """(a) Logits of block b do not move when later blocks change; one block spanning the
    sequence is LLaDA's bidirectional forward exactly."""
    cfg = preset("tiny", kind="block_diffusion", block_size=4)
    params = transformer.init_params(cfg, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 5, cfg.vocab_size)
    base = np.asarray(transformer.forward(params, cfg, tokens))
    for block in range(4):
        later = np.asarray(tokens).copy()
        later[:, (block + 1) * 4 :] = (later[:, (block + 1) * 4 :] + 7) % cfg.vocab_size
        out = np.asarray(transformer.forward(params, cfg, later))
        np.testing.assert_array_equal(out[:, : (block + 1) * 4], base[:, : (block + 1) * 4])
        if block < 3:  # the changed blocks themselves do see the change
            assert not np.allclose(out[:, (block + 1) * 4 :], base[:, (block + 1) * 4 :])
    llada = cfg.replace(kind="diffusion", block_size=None)
    whole = cfg.replace(block_size=16)
    np.testing.assert_array_equal(
        np.asarray(transformer.forward(params, whole, tokens)),
        np.asarray(transformer.forward(params, llada, tokens)),
    )


def test_block_size_is_checked():
    with pytest.raises(ConfigError, match="block_size=0 must be a positive int"):
        preset("tiny", kind="block_diffusion", block_size=0)
    with pytest.raises(ConfigError, match="block_size"):
        preset("tiny", kind="block_diffusion")
    with pytest.raises(ConfigError, match="only applies to kind='block_diffusion'"):
        preset("tiny", block_size=8)
