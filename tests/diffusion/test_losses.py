"""Forward process and losses against the PyTorch reference and independent numpy math."""

import jax
import jax.numpy as jnp
import numpy as np

from lladax.config import preset
from lladax.diffusion import losses
from lladax.model import transformer


def _np_ce(logits, targets):
    logits = logits.astype(np.float64)
    m = logits.max(-1, keepdims=True)
    logz = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]
    return logz - np.take_along_axis(logits, targets[..., None], -1)[..., 0]


def test_pretrain_loss_matches_reference(tiny_llada, golden):
    cfg, params = tiny_llada
    case = golden("pretrain_loss")
    args = [jnp.asarray(case[k]) for k in ("x0", "noisy", "p_mask")]
    loss = float(losses.pretrain_loss(params, cfg, *args))
    assert abs(loss - float(case["loss"])) <= 1e-6 + 1e-5 * abs(float(case["loss"]))
    logits = transformer.apply(params, cfg, args[1])
    token_loss = np.asarray(losses.weighted_token_loss(logits, *args, cfg.mask_token_id))
    np.testing.assert_allclose(token_loss, case["token_loss"], atol=1e-4, rtol=1e-5)
    assert np.array_equal(token_loss != 0, case["masked"])


def test_sft_loss_matches_reference(tiny_llada, golden):
    cfg, params = tiny_llada
    case = golden("sft_loss")
    loss = float(
        losses.sft_loss(
            params,
            cfg,
            *(jnp.asarray(case[k]) for k in ("x0", "noisy", "p_mask", "prompt_lengths")),
        )
    )
    assert abs(loss - float(case["loss"])) <= 1e-6 + 1e-5 * abs(float(case["loss"]))


def test_sft_loss_independent_numpy(tiny_llada, golden):
    cfg, params = tiny_llada
    case = golden("sft_loss")
    logits = np.asarray(transformer.forward(params, cfg, case["noisy"]))
    ce = _np_ce(logits, case["x0"])
    masked = case["noisy"] == cfg.mask_token_id
    answer_len = case["x0"].shape[1] - case["prompt_lengths"]
    rows = np.where(masked, ce, 0).sum(1) / case["p_mask"] / answer_len
    np.testing.assert_allclose(rows.mean(), float(case["loss"]), rtol=1e-5)


def test_mask_tokens_distribution():
    tokens = jnp.full((4096, 64), 7, jnp.int32)
    noisy, p_mask, masked = losses.mask_tokens(jax.random.key(0), tokens, mask_id=4)
    assert np.array_equal(np.asarray(noisy == 4), np.asarray(masked))
    p = np.asarray(p_mask)
    assert p.min() >= 1e-3 and p.max() <= 1.0
    assert abs(p.mean() - (1 + 1e-3) / 2) < 0.02  # t ~ U(0, 1)
    rate = np.asarray(masked).mean(1)  # per-row rate follows that row's p
    assert np.abs(rate - p).mean() < 0.06


def test_mask_tokens_keeps_prompt():
    tokens = jnp.arange(40, dtype=jnp.int32).reshape(2, 20) + 10
    prompt_lengths = jnp.array([5, 12])
    noisy, _, masked = losses.mask_tokens(
        jax.random.key(1), tokens, 4, prompt_lengths=prompt_lengths
    )
    assert not np.asarray(masked)[0, :5].any() and not np.asarray(masked)[1, :12].any()
    np.testing.assert_array_equal(np.asarray(noisy)[0, :5], np.asarray(tokens)[0, :5])


def test_truncation_equals_shorter_batch(tiny_llada, golden):
    """Key-masking the tail is exactly the loss of the truncated batch."""
    cfg, params = tiny_llada
    case = golden("pretrain_loss")
    x0, noisy, p_mask = (jnp.asarray(case[k]) for k in ("x0", "noisy", "p_mask"))
    keep = 13
    mask = jnp.broadcast_to(jnp.arange(x0.shape[1]) < keep, x0.shape)
    full = losses.pretrain_loss(params, cfg, x0, noisy, p_mask, mask)
    short = losses.pretrain_loss(params, cfg, x0[:, :keep], noisy[:, :keep], p_mask)
    np.testing.assert_allclose(full, short, rtol=2e-5)


def test_truncation_mask_probability():
    keys = jax.random.split(jax.random.key(0), 2000)
    lengths = jax.vmap(lambda k: losses.truncation_mask(k, 1, 64, 0.1).sum())(keys)
    truncated = np.asarray(lengths) < 64
    assert 0.07 < truncated.mean() < 0.13
    assert np.asarray(lengths).min() >= 1


def test_stratified_noise_levels_cover_the_batch_evenly():
    tokens = jnp.full((16, 8), 7, jnp.int32)
    keys = jax.random.split(jax.random.key(3), 500)
    p = np.asarray(jax.vmap(lambda k: losses.mask_tokens(k, tokens, 4, stratified=True)[1])(keys))
    t = (p - 1e-3) / (1 - 1e-3)
    # One draw per batch: exactly one row in each interval [i/16, (i+1)/16).
    assert all(sorted(np.floor(row * 16).astype(int)) == list(range(16)) for row in t)
    # ...and each row's t is still U(0, 1) marginally (unbiased ELBO).
    assert abs(t[:, 0].mean() - 0.5) < 0.04 and abs(t[:, 5].std() - 12**-0.5) < 0.03


def test_packed_loss_equals_per_document_losses(tiny_llada):
    """Packed rows (segment ids, restarting positions, padding excluded) give the same loss sum as
    each document alone: the loss normaliser counts real tokens only."""
    cfg, params = tiny_llada
    rng = np.random.default_rng(3)
    docs = [rng.integers(5, cfg.vocab_size, size=n) for n in (9, 14)]
    pad = 5
    clean = np.concatenate([*docs, np.full(pad, cfg.eos_token_id)])[None]
    segment_ids = np.concatenate([np.full(9, 1), np.full(14, 2), np.zeros(pad, int)])[None]
    positions = np.concatenate([np.arange(9), np.arange(14), np.arange(pad)])[None]
    noisy = np.where(rng.random(clean.shape) < 0.5, cfg.mask_token_id, clean)
    p_mask = np.array([0.5], np.float32)
    packed = losses.pretrain_loss(
        params,
        cfg,
        jnp.asarray(clean),
        jnp.asarray(noisy),
        jnp.asarray(p_mask),
        jnp.asarray(segment_ids > 0),
        segment_ids=jnp.asarray(segment_ids),
        positions=jnp.asarray(positions),
    )
    total, start = 0.0, 0
    for doc in docs:
        sl = slice(start, start + len(doc))
        doc_clean, doc_noisy = jnp.asarray(clean[:, sl]), jnp.asarray(noisy[:, sl])
        logits = transformer.apply(params, cfg, doc_noisy)
        total += float(
            losses.weighted_token_loss(
                logits, doc_clean, doc_noisy, jnp.asarray(p_mask), cfg.mask_token_id
            ).sum()
        )
        start += len(doc)
    np.testing.assert_allclose(float(packed), total / 23, rtol=1e-5)


def _block_noise(cfg, tokens, key, prompt_lengths=None):
    return losses.mask_tokens(
        key, tokens, cfg.mask_token_id, prompt_lengths=prompt_lengths, block_size=cfg.block_size
    )


def test_block_noise_is_per_block():
    cfg = preset("tiny", kind="block_diffusion", block_size=4)
    tokens = jnp.full((64, 16), 7, jnp.int32)
    noisy, p_mask, masked = _block_noise(cfg, tokens, jax.random.key(0))
    p = np.asarray(p_mask)
    assert p.shape == (64, 16)
    blocks = p.reshape(64, 4, 4)
    assert (blocks == blocks[..., :1]).all()  # constant within a block ...
    assert len(np.unique(blocks[..., 0])) > 200  # ... drawn per (row, block)
    np.testing.assert_array_equal(np.asarray(noisy) == cfg.mask_token_id, np.asarray(masked))


def _slow_block_loss(params, cfg, clean, noisy, p_mask, normaliser):
    """(b) Block by block: block b's logits from the clean prefix followed by noisy block b, run
    as a sequence of its own."""
    bs, total = cfg.block_size, 0.0
    llada = cfg.replace(kind="diffusion", block_size=None)  # one (partial) block: bidirectional
    for start in range(0, clean.shape[1], bs):
        rows = jnp.concatenate([clean[:, :start], noisy[:, start : start + bs]], axis=1)
        prefix_cfg = cfg if start else llada
        logits = transformer.apply(params, prefix_cfg, rows)[:, start:]
        total += float(
            jnp.sum(
                losses.weighted_token_loss(
                    logits,
                    clean[:, start : start + bs],
                    noisy[:, start : start + bs],
                    p_mask[:, start : start + bs],
                    cfg.mask_token_id,
                )
            )
        )
    return total / normaliser


def test_block_loss_equals_a_loop_over_blocks():
    cfg = preset("tiny", kind="block_diffusion", block_size=4)
    params = transformer.init_params(cfg, jax.random.key(0))
    clean = jax.random.randint(jax.random.key(1), (3, 14), 5, cfg.vocab_size)  # a partial block
    noisy, p_mask, _ = _block_noise(cfg, clean, jax.random.key(2))
    fast = float(losses.pretrain_loss(params, cfg, clean, noisy, p_mask))
    slow = _slow_block_loss(params, cfg, clean, noisy, p_mask, clean.size)
    assert abs(fast - slow) <= 1e-5 * abs(slow)
    # SFT: the prompt stays clean, each row normalised by its answer length
    prompt_lengths = jnp.asarray([3, 6, 9])
    noisy, p_mask, _ = _block_noise(cfg, clean, jax.random.key(3), prompt_lengths)
    assert not (np.asarray(noisy)[0, :3] == cfg.mask_token_id).any()
    sft = float(losses.sft_loss(params, cfg, clean, noisy, p_mask, prompt_lengths))
    slow = sum(
        _slow_block_loss(params, cfg, clean[i : i + 1], noisy[i : i + 1], p_mask[i : i + 1], 1)
        / (14 - int(prompt_lengths[i]))
        for i in range(3)
    )
    assert abs(sft - slow / 3) <= 1e-5 * abs(slow / 3)


def test_one_block_is_llada_loss_exactly():
    """(c) block_size = seq_len: the same noise as LLaDA's and the same loss, bit for bit; the
    two-copy forward (forced by a longer sequence's mask) agrees to float rounding."""
    bd = preset("tiny", kind="block_diffusion", block_size=16)
    llada = preset("tiny")
    params = transformer.init_params(llada, jax.random.key(0))
    clean = jax.random.randint(jax.random.key(1), (4, 16), 5, llada.vocab_size)
    key = jax.random.key(5)
    noisy, p_tok, _ = losses.mask_tokens(key, clean, bd.mask_token_id, block_size=16)
    noisy_ref, p_row, _ = losses.mask_tokens(key, clean, llada.mask_token_id)
    np.testing.assert_array_equal(np.asarray(noisy), np.asarray(noisy_ref))
    np.testing.assert_array_equal(np.asarray(p_tok), np.repeat(np.asarray(p_row)[:, None], 16, 1))
    ref = float(losses.pretrain_loss(params, llada, clean, noisy, p_row))
    assert float(losses.pretrain_loss(params, bd, clean, noisy, p_tok)) == ref
    plain = transformer.apply(params, llada, noisy)
    twin = transformer.apply(params, bd, jnp.concatenate([noisy, clean], axis=1), twin=True)
    np.testing.assert_allclose(np.asarray(twin[:, :16]), np.asarray(plain), atol=2e-5)
