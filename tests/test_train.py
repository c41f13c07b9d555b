"""The jitted train step: learning, sharding, accumulation and the LR schedule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lladax import sharding, train
from lladax.config import preset

CFG = preset("tiny")
TC = train.TrainConfig(steps=40, batch_size=8, grad_accum=1, lr=3e-3, warmup_steps=2,
                       truncate_prob=0.0)


@pytest.fixture(scope="module")
def tokens():
    # A learnable batch: each row is an arithmetic sequence of token ids.
    start = jax.random.randint(jax.random.key(1), (8, 1), 5, 200)
    return (start + jnp.arange(32)[None, :]) % CFG.vocab_size


def test_train_step_decreases_loss(tokens):
    opt = train.make_optimizer(TC)
    state = train.init_state(CFG, TC, opt, jax.random.key(0))
    key = jax.random.key(7)
    before = float(train.eval_loss(state.params, CFG, tokens, key))
    step = train.jit_train_step(CFG, TC, opt)
    for _ in range(25):
        state, metrics = step(state, {"tokens": tokens})
    after = float(train.eval_loss(state.params, CFG, tokens, key))
    assert int(state.step) == 25 and np.isfinite(float(metrics["grad_norm"]))
    assert after < 0.85 * before


def test_sharded_step_equals_single_device(tokens):
    tc = TC
    opt = train.make_optimizer(tc)
    single = train.init_state(CFG, tc, opt, jax.random.key(0))
    step = train.jit_train_step(CFG, tc, opt)
    for _ in range(2):
        single, m_single = step(single, {"tokens": tokens})
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    with jax.set_mesh(mesh):
        state = train.init_state(CFG, tc, opt, jax.random.key(0), mesh)
        assert not state.params["blocks"]["q_proj"].sharding.is_fully_replicated
        batch_sh = sharding.named_sharding(mesh, ("batch", None))
        sharded_step = train.jit_train_step(CFG, tc, opt, train.shardings_of(state), batch_sh)
        for _ in range(2):
            state, m_sharded = sharded_step(state, {"tokens": jax.device_put(tokens, batch_sh)})
    np.testing.assert_allclose(m_sharded["loss"], m_single["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(state.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)


def test_grad_accumulation_averages_micro_batches(tokens):
    tc = train.TrainConfig(steps=10, batch_size=8, grad_accum=2, lr=1e-3, truncate_prob=0.0)
    opt = train.make_optimizer(tc)
    state = train.init_state(CFG, tc, opt, jax.random.key(0))
    _, metrics = jax.jit(lambda s, b: train.train_step(s, b, cfg=CFG, tc=tc, optimizer=opt))(
        state, {"tokens": tokens})
    step_key = jax.random.fold_in(state.rng, 0)
    micro = tokens.reshape(2, 4, -1)
    expected = np.mean([train.loss_fn(state.params, CFG, tc, micro[i],
                                      jax.random.fold_in(step_key, i)) for i in range(2)])
    np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-5)


def test_wsd_schedule():
    tc = train.TrainConfig(steps=100, lr=1.0, warmup_steps=10, decay_fraction=0.2,
                           final_lr_ratio=0.1)
    sched = train.lr_schedule(tc)
    assert float(sched(0)) == 0.0 and float(sched(5)) == pytest.approx(0.5)
    assert float(sched(10)) == pytest.approx(1.0) and float(sched(79)) == pytest.approx(1.0)
    assert float(sched(90)) == pytest.approx(0.55) and float(sched(100)) == pytest.approx(0.1)


def test_weight_decay_skips_norms():
    tc = train.TrainConfig(lr=0.0, weight_decay=0.5, warmup_steps=0)
    opt = train.make_optimizer(tc)
    params = {"w": jnp.ones((2, 2)), "norm": jnp.ones((2,))}
    state = opt.init(params)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = opt.update(zero, state, params)
    assert float(jnp.abs(updates["norm"]).max()) == 0.0


def test_batch_not_divisible_by_accumulation():
    with pytest.raises(ValueError, match="not divisible by train.grad_accum"):
        train.TrainConfig(batch_size=6, grad_accum=4)
