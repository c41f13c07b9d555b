"""Block diffusion decoding (`lladax.diffusion.block_sampling`) on a tiny random block-diffusion
model (block_size 4): the exact KV cache against the uncached reference and a plain Python loop,
variable length on a model built to say EOS, the refusals, sharding.

Every run uses ONE prompt shape (3 rows, P = 6: the first decoded block holds 2 prompt positions)
and gen_length 16 (P + G = 22: the last block is cut), so the programs compile once: cached and
uncached, without and with CFG, and once on the mesh.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lladax import config
from lladax.diffusion import block_sampling, fast_sampling, sampling
from lladax.diffusion.sampler_config import SamplerConfig
from lladax.model import transformer
from lladax.model.sharding import make_mesh, named_sharding, tree_shardings

BD = config.preset("tiny", kind="block_diffusion", block_size=4, init_std=0.2)
P, G = 6, 16
N = 24  # ceil((P + G) / 4) * 4
GREEDY = SamplerConfig(gen_length=G, early_exit=False)


@pytest.fixture(scope="module")
def params():
    return transformer.init_params(BD, jax.random.key(0))


@pytest.fixture(scope="module")
def batch() -> tuple[np.ndarray, np.ndarray]:
    """prompt [3, P] (ids 5..299: no special id, no mask) and its attention mask; row 2 is
    left-padded by 2."""
    prompt = np.array(jax.random.randint(jax.random.key(1), (3, P), 5, 300), np.int32)
    mask = np.ones((3, P), np.int32)
    prompt[2, :2], mask[2, :2] = BD.pad_token_id, 0
    return prompt, mask


def _run(params, batch, sampler=GREEDY, **options):
    prompt, mask = batch
    sampler = dataclasses.replace(sampler, **options)
    out, stats = sampling.generate_with(params, BD, prompt, mask, sampler, return_stats=True)
    return np.asarray(out), {k: np.asarray(v) for k, v in stats.items()}


def _reference(params, row, attn, *, threshold=None):
    """Greedy block decoding of ONE row, written plainly: a Python loop over blocks and steps,
    one uncached block-causal forward per step, float64 confidences. -> (canvas [P + G], nfe)."""
    bs, mask = BD.block_size, BD.mask_token_id
    x = np.concatenate([row, np.full(N - P, mask)]).astype(np.int32)
    am = np.concatenate([attn, np.ones(N - P)]).astype(np.int32)
    s, nfe = bs, 0  # steps = G: one token per step, bs steps per block
    for lo in range(P // bs * bs, N, bs):
        m = int((x[lo : lo + bs] == mask).sum())
        for i in range(s):
            masked = np.flatnonzero(x[lo : lo + bs] == mask)
            if masked.size == 0:
                break
            logits = np.asarray(transformer.forward(params, BD, x[None], am[None]), np.float64)
            logits = logits[0, lo : lo + bs]
            nfe += 1
            p = np.exp(logits - logits.max(-1, keepdims=True))
            conf = (p / p.sum(-1, keepdims=True)).max(-1)
            k = max(m // s + (i < m % s), 1)
            for n, j in enumerate(sorted(masked, key=lambda j: (-conf[j], j)), start=1):
                if n <= k or (threshold is not None and conf[j] >= threshold):
                    x[lo + j] = logits[j].argmax()
    return x[: P + G], nfe


@pytest.mark.parametrize("threshold", [None, 0.05])
def test_cached_equals_uncached_and_a_plain_loop(params, batch, threshold):
    """(d) token for token at T = 0: a prompt that ends inside a block, a left-padded row,
    the threshold rule (traced: the same programs) and the cut last block."""
    cached, c_stats = _run(params, batch, threshold=threshold)
    uncached, u_stats = _run(params, batch, threshold=threshold, cache="none")
    np.testing.assert_array_equal(cached, uncached)
    for name in ("nfe", "block_evaluations", "lengths"):
        np.testing.assert_array_equal(c_stats[name], u_stats[name])
    np.testing.assert_array_equal(cached[:, :P], batch[0])
    assert cached.shape == (3, P + G) and not (cached == BD.mask_token_id).any()
    for r in range(3):
        want, nfe = _reference(params, batch[0][r], batch[1][r], threshold=threshold)
        np.testing.assert_array_equal(cached[r], want)
        assert c_stats["nfe"][r] == nfe
    if threshold is None:  # 2 masks in the first block, then 4 blocks of 4: one per step
        np.testing.assert_array_equal(c_stats["block_evaluations"], [2, 4, 4, 4, 4])
        assert c_stats["evaluations"] == 18 and (c_stats["nfe"] == 18).all()
    else:  # parallel commits: fewer evaluations
        assert c_stats["evaluations"] < 18


def test_cfg_cached_equals_uncached(params, batch):
    """(d) with classifier-free guidance: the cache holds 2B rows."""
    guided = dataclasses.replace(GREEDY, cfg_scale=1.5)
    cached, c_stats = _run(params, batch, guided)
    uncached, _ = _run(params, batch, guided, cache="none")
    np.testing.assert_array_equal(cached, uncached)
    assert (cached != _run(params, batch)[0]).any()  # guidance changed something
    mesh = make_mesh(data=2, fsdp=2, tensor=2)  # batch 4 over data x fsdp = 4 shards
    rows = [np.concatenate([a, a[:1]]) for a in batch]
    p_sh = jax.device_put(params, tree_shardings(mesh, transformer.param_logical_axes(BD)))
    x_sh, m_sh = (
        jax.device_put(jnp.asarray(a), named_sharding(mesh, ("batch", None))) for a in rows
    )
    with jax.set_mesh(mesh):
        out, stats = sampling.generate_with(p_sh, BD, x_sh, m_sh, guided, return_stats=True)
    assert len(out.sharding.device_set) == 8
    np.testing.assert_array_equal(np.asarray(out), cached[[0, 1, 2, 0]])  # rows are independent
    np.testing.assert_array_equal(stats["nfe"], c_stats["nfe"][[0, 1, 2, 0]])


TRIGGER, ANSWER = 50, 100


def _eos_model(params):
    """A model that says EOS once few enough of the keys it sees are TRIGGER tokens.

    Everything is zero but one attention head of layer 0 and the LM head. Queries and keys are
    zero, so a query averages the values of every key it sees (its block and earlier ones, no
    padding); a TRIGGER key's value is 8 in residual direction 3, any other key's 0. A masked
    position's residual is then e_0 + 8 f e_3 (f: the TRIGGER share of its keys) and its logits
    16 (EOS) against 80 f (ANSWER), over the same norm: EOS wins once f < 0.2. Every position of
    a block sees the same keys, so a whole block turns EOS or ANSWER.
    """
    p = jax.tree.map(jnp.zeros_like, params)
    blocks = p["blocks"]
    ones = jax.tree.map(jnp.ones_like, (blocks["attn_norm"], blocks["ff_norm"], p["ln_f"]))
    blocks["attn_norm"], blocks["ff_norm"], p["ln_f"] = ones
    p["wte"] = p["wte"].at[:, 2].set(1.0).at[BD.mask_token_id].set(jnp.eye(BD.d_model)[0])
    p["wte"] = p["wte"].at[TRIGGER].set(jnp.eye(BD.d_model)[1])
    blocks["v_proj"] = blocks["v_proj"].at[0, 1, 0, 0].set(1.0)  # trigger -> head 0, dim 0
    blocks["attn_out"] = blocks["attn_out"].at[0, 0, 0, 3].set(1.0)  # -> residual dim 3
    p["lm_head"] = p["lm_head"].at[0, BD.eos_token_id].set(16.0).at[3, ANSWER].set(10.0)
    return p


def test_rows_stop_at_their_eos_block(params):
    """(e) variable length. Row 0 has no TRIGGER (EOS at once), row 1 three of 6 prompt tokens
    (f = 3/8, 3/12, 3/16: EOS in block 3), row 2 three of 4 real tokens (f = 3/14 in block 3,
    3/18 in block 4)."""
    eos, pad, t = BD.eos_token_id, BD.pad_token_id, TRIGGER
    prompt = np.array([[1, 60, 60, 60, 60, 60], [1, t, t, t, 60, 60], [pad, pad, 1, t, t, t]])
    mask = np.array([[1] * 6, [1] * 6, [0, 0, 1, 1, 1, 1]])
    model = _eos_model(params)
    stops = [(eos, eos), (ANSWER, eos), (ANSWER, eos)]
    lengths = [0, 6, 10]
    early, e_stats = _run(model, (prompt, mask), SamplerConfig(gen_length=G))  # the kind's default
    full, f_stats = _run(model, (prompt, mask), early_exit=False)
    uncached, _ = _run(model, (prompt, mask), cache="none")
    for r, ((before, after), n) in enumerate(zip(stops, lengths, strict=True)):
        assert (early[r, P : P + n] == before).all() and (early[r, P + n :] == after).all()
    np.testing.assert_array_equal(early, full)  # later blocks say EOS anyway
    np.testing.assert_array_equal(early, uncached)
    for stats in (e_stats, f_stats):
        np.testing.assert_array_equal(stats["lengths"], lengths)
    # early exit: row 0 stops after block 1, row 1 after block 3, row 2 after block 4; block 5
    # runs no forward. Without it every block runs for every row.
    np.testing.assert_array_equal(e_stats["block_evaluations"], [2, 4, 4, 4, 0])
    np.testing.assert_array_equal(e_stats["nfe"], [2, 10, 14])
    assert e_stats["finished_early"].all() and e_stats["evaluations"] == 14
    np.testing.assert_array_equal(f_stats["block_evaluations"], [2, 4, 4, 4, 4])
    assert (f_stats["nfe"] == 18).all() and not f_stats["finished_early"].any()


def test_keyword_face_and_refusals(params, batch):
    prompt, mask = batch
    kw = dict(steps=None, gen_length=G, early_exit=False)
    out = sampling.generate(params, BD, prompt, mask, block_length=4, **kw)  # = block_size
    np.testing.assert_array_equal(out, _run(params, batch)[0])  # the same program and tokens
    with pytest.raises(ValueError, match="block_size=4") as e:
        sampling.generate(params, BD, prompt, mask, block_length=8, **kw)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="block_size=4"):
        sampling.generate_with(
            params, BD, prompt, mask, SamplerConfig(gen_length=8, block_length=8)
        )
    with pytest.raises(ValueError, match="block diffusion keeps none: drop return_history"):
        sampling.generate_with(params, BD, prompt, mask, GREEDY, return_history=True)
    bad = prompt.copy()
    bad[0, 3] = BD.mask_token_id
    with pytest.raises(ValueError, match="prompt contains mask_token_id"):
        sampling.generate_with(params, BD, bad, mask, GREEDY)
    with pytest.raises(ValueError, match="rng is required"):
        sampling.generate(params, BD, prompt, mask, block_length=None, temperature=0.5, **kw)
    # threshold / factor need no cache mode here; LLaDA's exact sampler refuses them (no compile)
    tiny = config.preset("tiny")
    with pytest.raises(ValueError, match="fast-decoding rules: also set cache"):
        sampling.generate(
            params, tiny, prompt, threshold=0.9, steps=4, gen_length=4, block_length=4
        )


def test_layout_steps_and_model_flops():
    assert block_sampling.layout(6, 16, 4) == (24, 1, 5)  # last partial block completed, cut
    assert block_sampling.layout(8, 8, 4) == (16, 2, 2)  # prompt ends on a block boundary
    assert block_sampling.layout(3, 1, 32) == (32, 0, 1)
    steps = block_sampling.steps_per_block
    assert [steps(s, 16, 4) for s in (16, 8, 4, 1, 64)] == [4, 2, 1, 1, 4]
    assert steps(5, 12, 8) == 4  # ceil(5 * 8 / 12)
    flops = fast_sampling.evaluation_flops
    stats = {"block_evaluations": np.array([2, 3, 0])}  # blocks 1, 2, 3 of a 16-long canvas
    kw = dict(queries=4)
    want = (
        flops(BD, keys=8, fresh=8, **kw)  # prefill: blocks 0 and 1
        + flops(BD, keys=8, fresh=4, **kw)
        + flops(BD, keys=12, fresh=8, **kw)  # blocks 1 (now final) and 2
        + 2 * flops(BD, keys=12, fresh=4, **kw)
    )
    got = block_sampling.model_flops(BD, stats, batch=2, canvas_len=15, guided=True)
    assert got == pytest.approx(4 * want)
