"""DPO / VRPO: the loss against independent numpy math on fixed noise, antithetic sampling's exact
zero, the variance of the allocations, the AR baseline's exact log-probs, block diffusion."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lladax.config import preset
from lladax.diffusion import autoregressive, losses, preference
from lladax.model import transformer

CFG = preset("tiny", init_std=0.5)  # a wide init: predictions depend strongly on the context
SEQ, PAIRS = 24, 3


@functools.cache
def params(seed: int = 0, cfg=CFG):
    return transformer.init_params(cfg, jax.random.key(seed))


@functools.cache
def batch():
    """Three pairs: prompts of 6, 9 and 12 tokens, answers differing after the prompt."""
    rng = np.random.default_rng(0)
    chosen = rng.integers(5, 300, (PAIRS, SEQ)).astype(np.int32)
    rejected = chosen.copy()
    prompt_lengths = np.array([6, 9, 12], np.int32)
    for r, p in enumerate(prompt_lengths):
        rejected[r, p:] = rng.integers(5, 300, SEQ - p)
    return {
        "chosen": jnp.asarray(chosen),
        "rejected": jnp.asarray(rejected),
        "prompt_lengths": jnp.asarray(prompt_lengths),
    }


def _np_log_softmax(logits):
    logits = np.asarray(logits, np.float64)
    m = logits.max(-1, keepdims=True)
    return logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))


def _np_elbo(p, cfg, tokens, prompt_lengths, masked):
    """The estimate copy by copy: one forward per noisy copy, weight T / (masked count)."""
    out = []
    for r in range(tokens.shape[0]):
        T = tokens.shape[1] - int(prompt_lengths[r])
        copies = []
        for c in range(masked.shape[1]):
            m = masked[r, c]
            noisy = np.where(m, cfg.mask_token_id, tokens[r])
            log_p = _np_log_softmax(transformer.apply(p, cfg, jnp.asarray(noisy[None])))[0]
            picked = log_p[np.arange(tokens.shape[1]), tokens[r]]
            copies.append(T / m.sum() * picked[m].sum())
        out.append(np.mean(copies))
    return np.array(out)


@pytest.mark.parametrize("antithetic", [True, False])
def test_loss_matches_an_independent_computation(antithetic):
    b, beta, n_t, n_yt = batch(), 0.3, 2, 2
    policy, ref = params(0), params(1)
    key = jax.random.key(7)
    loss, metrics = jax.jit(
        functools.partial(
            preference.preference_loss,
            cfg=CFG,
            beta=beta,
            n_t=n_t,
            n_yt=n_yt,
            antithetic=antithetic,
            nll_weight=0.25,
        )
    )(policy, ref, batch=b, key=key)
    # The same noise, drawn again, and checked to be what the estimator promises.
    policy_key, reference_key = jax.random.split(key)
    noise = preference.pair_noise(policy_key, b, CFG, n_t, n_yt)
    ref_noise = noise if antithetic else preference.pair_noise(reference_key, b, CFG, n_t, n_yt)
    tokens = np.concatenate([np.asarray(b["chosen"]), np.asarray(b["rejected"])])
    plen = np.concatenate([np.asarray(b["prompt_lengths"])] * 2)
    for nz in (noise, ref_noise):
        masked = np.asarray(nz.masked)
        in_prompt = np.broadcast_to(
            np.arange(SEQ)[None, None, :] < plen[:, None, None], masked.shape
        )
        assert not masked[in_prompt].any()
        counts = masked.sum(-1)
        assert (counts >= 1).all() and (counts <= (SEQ - plen)[:, None]).all()
        # n_yt masks of one level share their count
        assert (counts.reshape(-1, n_t, n_yt) == counts.reshape(-1, n_t, n_yt)[..., :1]).all()
    pol = _np_elbo(policy, CFG, tokens, plen, np.asarray(noise.masked))
    ref_ = _np_elbo(ref, CFG, tokens, plen, np.asarray(ref_noise.masked))
    score = beta * ((pol[:PAIRS] - ref_[:PAIRS]) - (pol[PAIRS:] - ref_[PAIRS:]))
    nll = np.mean(-pol[:PAIRS] / (SEQ - plen[:PAIRS]))  # chosen, per answer token
    want = np.mean(np.log1p(np.exp(-score))) + 0.25 * nll
    np.testing.assert_allclose(float(metrics["chosen_nll"]), nll, rtol=2e-5)
    np.testing.assert_allclose(float(loss), want, rtol=2e-5)
    np.testing.assert_allclose(float(metrics["score"]), score.mean(), rtol=2e-4, atol=1e-5)
    assert float(metrics["reward_accuracy"]) == pytest.approx(np.mean(score > 0))


def _scores(policy, ref, antithetic, n_t, n_yt, draws):
    """The preference score of every pair under `draws` keys: [draws, pairs]."""

    def score(key):
        pk, rk = jax.random.split(key)
        nz = preference.pair_noise(pk, batch(), CFG, n_t, n_yt)
        rnz = nz if antithetic else preference.pair_noise(rk, batch(), CFG, n_t, n_yt)
        pc, pr = preference.pair_log_likelihoods(policy, CFG, batch(), nz)
        rc, rr = preference.pair_log_likelihoods(ref, CFG, batch(), rnz)
        return (pc - rc) - (pr - rr)

    keys = jax.random.split(jax.random.key(11), draws)
    return np.asarray(jax.jit(jax.vmap(score))(keys))


def test_antithetic_sampling_makes_the_score_exactly_zero_for_policy_equal_reference():
    same = params(0)
    anti = _scores(same, same, True, 2, 1, 16)
    assert (anti == 0.0).all()  # every pair, every draw: loss log 2, zero variance
    loss, _ = preference.preference_loss(
        same, same, CFG, batch(), jax.random.key(3), beta=0.1, n_t=2, n_yt=1, antithetic=True
    )
    assert float(loss) == pytest.approx(np.log(2.0), abs=1e-7)
    independent = _scores(same, same, False, 2, 1, 16)
    assert (independent != 0).all() and independent.std(axis=0).min() > 0


@pytest.mark.parametrize(
    "cfg",
    [preset("tiny", kind="block_diffusion", block_size=8), preset("tiny", kind="autoregressive")],
    ids=["block_diffusion", "autoregressive"],
)
def test_every_kind_scores_zero_against_itself(cfg):
    p = params(0, cfg)
    loss, m = preference.preference_loss(
        p, p, cfg, batch(), jax.random.key(4), beta=0.1, n_t=2, n_yt=1, antithetic=True
    )
    assert float(m["score"]) == 0.0 and float(loss) == pytest.approx(np.log(2.0), abs=1e-7)


@functools.cache
def runs_model():
    """The tiny model trained for a few seconds on rows whose answer is a run of consecutive ids
    from a random start: a masked answer token is predictable from the visible ones, so its
    predictions depend on how much of the answer is masked, as a real model's do."""
    cfg = preset("tiny")
    half = SEQ // 2
    opt = optax.adam(3e-3)

    @jax.jit
    def step(p, state, key):
        k1, k2 = jax.random.split(key)
        tokens = runs(jax.random.randint(k1, (32, 1), 0, 40))
        lengths = jnp.full((32,), half)
        noisy, p_mask, _ = losses.mask_tokens(k2, tokens, cfg.mask_token_id, prompt_lengths=lengths)
        loss, g = jax.value_and_grad(losses.sft_loss)(p, cfg, tokens, noisy, p_mask, lengths)
        updates, state = opt.update(g, state)
        return optax.apply_updates(p, updates), state, loss

    def runs(start):  # [rows, 1] -> [rows, SEQ]: prompt 5 6 7 ..., answer start + 0, 1, ...
        prompt = jnp.broadcast_to(5 + jnp.arange(half), (start.shape[0], half))
        return jnp.concatenate([prompt, 5 + (start + jnp.arange(half)) % 40], axis=1)

    p = transformer.init_params(cfg, jax.random.key(0))
    state = opt.init(p)
    for i in range(150):
        p, state, loss = step(p, state, jax.random.key(i))
    tokens = runs(jnp.arange(PAIRS)[:, None] * 7)
    pairs = {"chosen": tokens, "rejected": tokens, "prompt_lengths": jnp.full((PAIRS,), half)}
    return cfg, p, pairs, float(loss)


def test_optimal_allocation_has_lower_variance_at_equal_budget():
    """n_t = 4, n_yt = 1 vs n_t = 1, n_yt = 4: the ELBO estimate of each answer over many
    draws; the variance over noise levels dominates (VRPO, Theorem 2)."""
    cfg, p, pairs, loss = runs_model()
    assert loss < 2.5  # it learned the runs (a uniform guess over the 40 ids: 3.7 nats)

    def estimates(n_t, n_yt):
        def one(key):
            nz = preference.pair_noise(key, pairs, cfg, n_t, n_yt)
            return preference.pair_log_likelihoods(p, cfg, pairs, nz)[0]

        keys = jax.random.split(jax.random.key(5), 256)
        return np.asarray(jax.jit(jax.vmap(one))(keys))

    spread, stacked = estimates(4, 1).var(axis=0), estimates(1, 4).var(axis=0)
    assert (spread < 0.7 * stacked).all(), (spread, stacked)


def test_autoregressive_dpo_uses_exact_log_probs():
    cfg = preset("tiny", kind="autoregressive")
    p, b = params(0, cfg), batch()
    chosen, rejected = preference.pair_log_likelihoods(p, cfg, b, None)
    real = jnp.ones(b["chosen"].shape, bool)
    want = autoregressive.sequence_log_prob(p, cfg, b["chosen"], real, b["prompt_lengths"])
    np.testing.assert_allclose(np.asarray(chosen), np.asarray(want), rtol=1e-6)
    assert preference.pair_noise(jax.random.key(0), b, cfg, 8, 1) is None
    loss, _ = preference.preference_loss(
        p, params(1, cfg), cfg, b, jax.random.key(0), beta=0.5, n_t=8, n_yt=1, antithetic=True
    )
    ref_c, ref_r = preference.pair_log_likelihoods(params(1, cfg), cfg, b, None)
    score = 0.5 * ((chosen - ref_c) - (rejected - ref_r))
    np.testing.assert_allclose(float(loss), float(jnp.mean(jax.nn.softplus(-score))), rtol=1e-6)


def test_block_diffusion_draws_every_block_its_own_level():
    b = batch()
    noise = preference.pair_noise(
        jax.random.key(2), b, preset("tiny", kind="block_diffusion", block_size=8), 3, 1
    )
    masked, weight = np.asarray(noise.masked), np.asarray(noise.weight)
    plen = np.concatenate([np.asarray(b["prompt_lengths"])] * 2)
    for r in range(masked.shape[0]):
        for c in range(masked.shape[1]):
            for start in range(0, SEQ, 8):
                block = slice(start, start + 8)
                answer = np.arange(start, start + 8) >= plen[r]
                count = masked[r, c, block].sum()
                if answer.any():  # 1..T masked, all with weight T / count
                    assert 1 <= count <= answer.sum()
                    w = weight[r, c, block][masked[r, c, block]]
                    np.testing.assert_allclose(w, answer.sum() / count)
                else:
                    assert count == 0
