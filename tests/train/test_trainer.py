"""The jitted train step: learning, sharding, accumulation, LR schedule, batch kinds, and the
robustness guard (non-finite skip, LR drop, spikes, EMA)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lladax.config import ConfigError, preset
from lladax.diffusion import losses
from lladax.model import sharding, transformer
from lladax.train import stopping, trainer
from lladax.train.run_config import TrainConfig

CFG = preset("tiny")
TC = TrainConfig(steps=40, batch_size=8, grad_accum=1, lr=3e-3, warmup_steps=2, truncate_prob=0.0)


@pytest.fixture(scope="module")
def tokens():
    # A learnable batch: each row is an arithmetic sequence of token ids.
    start = jax.random.randint(jax.random.key(1), (8, 1), 5, 200)
    return (start + jnp.arange(32)[None, :]) % CFG.vocab_size


def _leaves_equal(a, b) -> bool:
    return all(
        np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


@functools.lru_cache
def _initial(tc):
    """init_state(tc, key 0), built once per config (callers that donate it get a copy)."""
    return trainer.init_state(CFG, tc, trainer.make_optimizer(tc), jax.random.key(0))


def _fresh(tc):
    return jax.tree.map(lambda x: x.copy(), _initial(tc))


@functools.lru_cache
def _step(tc):
    """The (not donated) jitted step, compiled once per config for the whole module."""
    return jax.jit(
        lambda s, b: trainer.train_step(s, b, cfg=CFG, tc=tc, optimizer=trainer.make_optimizer(tc))
    )


# One config for the guard tests, so they share one compiled step.
GUARDED = TrainConfig(
    steps=10,
    batch_size=8,
    lr=1e-3,
    warmup_steps=0,
    truncate_prob=0.0,
    nan_lr_drop_after=2,
    nan_lr_drop_factor=0.25,
    ema_decay=0.9,
)


def test_train_step_decreases_loss(tokens):
    opt = trainer.make_optimizer(TC)
    state = _fresh(TC)
    key = jax.random.key(7)
    before = float(trainer.eval_loss(state.params, CFG, tokens, key))
    step = trainer.jit_train_step(CFG, TC, opt)
    for _ in range(25):
        state, metrics = step(state, {"tokens": tokens})
    after = float(trainer.eval_loss(state.params, CFG, tokens, key))
    assert int(state.step) == 25 and np.isfinite(float(metrics["grad_norm"]))
    assert int(state.guard["skipped"]) == 0 and bool(metrics["finite"])
    assert after < 0.85 * before


def test_sharded_step_equals_single_device(tokens):
    tc = TC
    opt = trainer.make_optimizer(tc)
    single = _fresh(tc)
    step = trainer.jit_train_step(CFG, tc, opt)
    for _ in range(2):
        single, m_single = step(single, {"tokens": tokens})
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    with jax.set_mesh(mesh):
        state = trainer.init_state(CFG, tc, opt, jax.random.key(0), mesh)
        assert not state.params["blocks"]["q_proj"].sharding.is_fully_replicated
        batch_sh = sharding.named_sharding(mesh, ("batch",))
        sharded_step = trainer.jit_train_step(CFG, tc, opt, trainer.shardings_of(state), batch_sh)
        for _ in range(2):
            state, m_sharded = sharded_step(state, {"tokens": jax.device_put(tokens, batch_sh)})
    np.testing.assert_allclose(m_sharded["loss"], m_single["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(state.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)


def test_grad_accumulation_averages_micro_batches(tokens):
    tc = TrainConfig(steps=10, batch_size=8, grad_accum=2, lr=1e-3, truncate_prob=0.0)
    state = _initial(TC)  # the same state layout
    _, metrics = _step(tc)(state, {"tokens": tokens})
    step_key = jax.random.fold_in(state.rng, 0)
    micro = tokens.reshape(4, 2, -1).swapaxes(0, 1)  # row i -> micro-batch i % grad_accum
    expected = np.mean(
        [
            trainer.loss_fn(
                state.params, CFG, tc, {"tokens": micro[i]}, jax.random.fold_in(step_key, i)
            )
            for i in range(2)
        ]
    )
    np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-5)


def test_sft_batch_uses_sft_loss(tokens):
    """{"tokens", "prompt_lengths"}: prompts never masked, loss = losses.sft_loss."""
    state = _initial(TC)
    prompt_lengths = jnp.arange(8, dtype=jnp.int32) + 3
    _, metrics = _step(TC)(state, {"tokens": tokens, "prompt_lengths": prompt_lengths})
    key = jax.random.fold_in(jax.random.fold_in(state.rng, 0), 0)
    mask_key, _ = jax.random.split(key)
    noisy, p_mask, masked = losses.mask_tokens(
        mask_key, tokens, CFG.mask_token_id, prompt_lengths=prompt_lengths
    )
    assert not bool(jnp.any(masked & (jnp.arange(32)[None] < prompt_lengths[:, None])))
    expected = losses.sft_loss(state.params, CFG, tokens, noisy, p_mask, prompt_lengths)
    np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-6)


def test_packed_batch_passes_segments_to_the_model(tokens):
    """Packed rows: segment ids / positions reach the model; padding (id 0) leaves the loss."""
    seg = jnp.concatenate([jnp.full((8, 20), 1), jnp.full((8, 8), 2), jnp.zeros((8, 4))], 1)
    seg = seg.astype(jnp.int32)
    pos = jnp.concatenate([jnp.arange(20), jnp.arange(8), jnp.zeros(4)]).astype(jnp.int32)
    pos = jnp.broadcast_to(pos, (8, 32))
    state = _initial(TC)
    batch = {"tokens": tokens, "segment_ids": seg, "positions": pos}
    _, metrics = _step(TC)(state, batch)
    mask_key, _ = jax.random.split(jax.random.fold_in(jax.random.fold_in(state.rng, 0), 0))
    noisy, p_mask, _ = losses.mask_tokens(mask_key, tokens, CFG.mask_token_id)
    logits = transformer.apply(
        state.params, CFG, noisy, seg > 0, packing=transformer.Packing(seg, pos)
    )
    per_token = losses.weighted_token_loss(logits, tokens, noisy, p_mask, CFG.mask_token_id)
    expected = jnp.sum(jnp.where(seg > 0, per_token, 0.0)) / jnp.sum(seg > 0)
    np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-5)


def test_wsd_schedule():
    tc = TrainConfig(steps=100, lr=1.0, warmup_steps=10, decay_fraction=0.2, final_lr_ratio=0.1)
    sched = trainer.lr_schedule(tc)
    assert float(sched(0)) == 0.0 and float(sched(5)) == pytest.approx(0.5)
    assert float(sched(10)) == pytest.approx(1.0) and float(sched(79)) == pytest.approx(1.0)
    assert float(sched(90)) == pytest.approx(0.55) and float(sched(100)) == pytest.approx(0.1)


def test_weight_decay_skips_norms():
    tc = TrainConfig(lr=0.0, weight_decay=0.5, warmup_steps=0)
    opt = trainer.make_optimizer(tc)
    params = {"w": jnp.ones((2, 2)), "norm": jnp.ones((2,))}
    state = opt.init(params)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = opt.update(zero, state, params)
    assert float(jnp.abs(updates["norm"]).max()) == 0.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(batch_size=6, grad_accum=4), "not divisible by train.grad_accum"),
        (dict(ema_decay=1.0), "ema_decay=1.0 must be in"),
        (dict(nan_lr_drop_factor=0.0), "nan_lr_drop_factor=0.0"),
        (dict(spike_factor=0.5), "spike_factor=0.5 must be > 1"),
    ],
)
def test_bad_train_config(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**kwargs)


# --- robustness ----------------------------------------------------------------------------------
def _poisoned(tokens):
    """A corrupted batch: one id outside the vocabulary gathers a NaN embedding (jnp.take fills
    out-of-range rows with NaN), so the loss and every gradient are NaN."""
    return tokens.at[3, 5].set(CFG.vocab_size)


def test_non_finite_step_is_skipped(tokens):
    tc = GUARDED
    step = _step(tc)
    state, _ = step(_initial(tc), {"tokens": tokens})
    after, m = step(state, {"tokens": _poisoned(tokens)})
    assert not np.isfinite(float(m["loss"])) and not bool(m["finite"])
    assert _leaves_equal(after.params, state.params)
    assert _leaves_equal(after.opt_state, state.opt_state)
    assert _leaves_equal(after.ema, state.ema)
    assert int(after.step) == 2 and int(after.guard["skipped"]) == 1
    assert int(after.guard["streak"]) == 1
    # Training continues: the next finite batch updates the params and resets the streak.
    resumed, m = step(after, {"tokens": tokens})
    assert bool(m["finite"]) and not _leaves_equal(resumed.params, after.params)
    assert int(resumed.guard["skipped"]) == 1 and int(resumed.guard["streak"]) == 0
    assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(resumed.params))


def test_lr_drops_after_consecutive_skips(tokens):
    tc = GUARDED
    step = _step(tc)
    state = _initial(tc)
    clean, _ = step(state, {"tokens": tokens})
    dropped = clean
    for _ in range(2):
        dropped, _ = step(dropped, {"tokens": _poisoned(tokens)})
    assert float(dropped.guard["lr_scale"]) == 0.25 and int(dropped.guard["streak"]) == 0
    # Same optimizer state and params, same noise -> the update is exactly 1/4 of the unscaled.
    undropped = dropped.replace(guard=dropped.guard | {"lr_scale": jnp.float32(1.0)})
    new_dropped, m = step(dropped, {"tokens": tokens})
    new_full, _ = step(undropped, {"tokens": tokens})
    for p, a, b in zip(
        jax.tree.leaves(dropped.params),
        jax.tree.leaves(new_dropped.params),
        jax.tree.leaves(new_full.params),
        strict=True,
    ):
        # atol: one f32 ulp of the params (~1) the deltas are taken from
        np.testing.assert_allclose(
            np.asarray(a - p), 0.25 * np.asarray(b - p), rtol=1e-4, atol=2.5e-7
        )
    assert float(m["lr"]) == pytest.approx(0.25 * 1e-3)


def test_ema_follows_params(tokens):
    tc = GUARDED
    state = _initial(tc)
    assert _leaves_equal(state.ema, state.params)
    expected = jax.tree.map(np.asarray, state.ema)
    step = _step(tc)
    for batch in (tokens, _poisoned(tokens), tokens):  # the skipped step leaves the EMA alone
        new, m = step(state, {"tokens": batch})
        if bool(m["finite"]):
            expected = jax.tree.map(
                lambda e, p: 0.9 * e + 0.1 * np.asarray(p), expected, new.params
            )
        state = new
    for e, got in zip(jax.tree.leaves(expected), jax.tree.leaves(state.ema), strict=True):
        np.testing.assert_allclose(np.asarray(got), e, rtol=1e-6, atol=1e-7)
    assert not _leaves_equal(state.ema, state.params)


# --- StopRequest: what a signal does at each moment of a run ------------------------------------
def test_stop_request_waits_for_a_save_in_flight(monkeypatch):
    """The handler itself, called as a signal would: the first signal asks for a stop; a second
    one while a save is in flight never kills the process (it waits for the commit); a second
    one otherwise restores the default handler and re-sends the signal (stop at once)."""
    import os
    import signal

    sent = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append(sig))
    with stopping.StopRequest() as stop:
        assert signal.getsignal(signal.SIGTERM) == stop._handle and not stop(1)
        stop._handle(signal.SIGTERM, None)
        assert stop(2) and stop.reason == "SIGTERM" and not stop.hurry
        stop.saving = True
        stop._handle(signal.SIGTERM, None)
        assert stop.hurry and sent == [] and signal.getsignal(signal.SIGTERM) == stop._handle
        stop.saving = False
        stop._handle(signal.SIGTERM, None)
        assert sent == [signal.SIGTERM] and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
