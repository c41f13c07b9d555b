"""The autoregressive baseline: causal attention, the exact next-token loss, cached decoding, and
the guards that keep each model kind on its own sampler."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lladax.cli import main
from lladax.config import preset
from lladax.diffusion import autoregressive, sampling
from lladax.model import transformer
from lladax.store import convert
from lladax.train import trainer
from lladax.train.run_config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
AR = preset("tiny", kind="autoregressive", remat_policy="none")


@pytest.fixture(scope="module")
def params():
    return transformer.init_params(AR, jax.random.key(0))


def _log_softmax(logits):
    logits = np.asarray(logits, np.float64)
    return (
        logits
        - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - logits.max(-1, keepdims=True)
    )


@pytest.mark.parametrize("impl", ["xla", "splash_interpret"])
def test_logits_at_i_do_not_depend_on_later_tokens(params, impl):
    cfg = AR.replace(attention_impl=impl)
    tokens = jax.random.randint(jax.random.key(1), (2, 128), 5, cfg.vocab_size)
    cut = 70
    changed = tokens.at[:, cut:].set((tokens[:, cut:] + 7) % cfg.vocab_size)
    a, b = transformer.apply(params, cfg, tokens), transformer.apply(params, cfg, changed)
    np.testing.assert_allclose(a[:, :cut], b[:, :cut], rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(a[:, cut:] - b[:, cut:])).max() > 1e-3
    # The diffusion model with the same weights is bidirectional: earlier logits do change.
    bi = preset("tiny", remat_policy="none", attention_impl=impl)
    c, d = transformer.apply(params, bi, tokens), transformer.apply(params, bi, changed)
    assert np.abs(np.asarray(c[:, :cut] - d[:, :cut])).max() > 1e-3


def test_next_token_loss_equals_a_direct_computation(params):
    rng = np.random.default_rng(0)
    tokens = rng.integers(5, AR.vocab_size, (3, 12)).astype(np.int32)
    logp = _log_softmax(transformer.apply(params, AR, tokens))
    # Plain rows: the mean of -log p(x_{i+1} | x_{<=i}) over all 3 × 11 targets.
    direct = -np.mean([logp[b, i, tokens[b, i + 1]] for b in range(3) for i in range(11)])
    got = autoregressive.next_token_loss(params, AR, jnp.asarray(tokens))
    np.testing.assert_allclose(got, direct, rtol=1e-5)
    # SFT rows: only answer tokens (index >= prompt length) are targets.
    prompt_lengths = np.array([4, 7, 11])
    direct = -np.mean(
        [logp[b, i, tokens[b, i + 1]] for b in range(3) for i in range(prompt_lengths[b] - 1, 11)]
    )
    got = autoregressive.next_token_loss(
        params, AR, jnp.asarray(tokens), prompt_lengths=jnp.asarray(prompt_lengths)
    )
    np.testing.assert_allclose(got, direct, rtol=1e-5)


def test_packed_rows_never_predict_across_documents(params):
    doc_a, doc_b = np.array([1, 9, 10, 11, 12], np.int32), np.array([1, 20, 21, 22], np.int32)
    row = np.concatenate([doc_a, doc_b, [2, 2, 2]])[None]
    seg = np.array([[1] * 5 + [2] * 4 + [0] * 3])
    pos = np.array([[0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 0, 0]])
    got = autoregressive.next_token_loss(
        params,
        AR,
        jnp.asarray(row),
        jnp.asarray(seg > 0),
        packing=transformer.Packing(jnp.asarray(seg), jnp.asarray(pos)),
    )
    alone = [
        autoregressive.token_nll(transformer.apply(params, AR, x), x)[0]
        for x in (jnp.asarray(d[None]) for d in (doc_a, doc_b))
    ]
    np.testing.assert_allclose(got, np.mean(np.concatenate(alone)), rtol=1e-5)


def test_train_step_uses_the_next_token_loss(params):
    tc = TrainConfig(steps=2, batch_size=4, truncate_prob=0.0, warmup_steps=1)
    tokens = jax.random.randint(jax.random.key(2), (4, 16), 5, AR.vocab_size)
    got = trainer.loss_fn(params, AR, tc, {"tokens": tokens}, jax.random.key(3))
    np.testing.assert_allclose(got, autoregressive.next_token_loss(params, AR, tokens), rtol=1e-6)
    np.testing.assert_allclose(
        trainer.eval_loss(params, AR, tokens, jax.random.key(4)), got, rtol=1e-6
    )
    assert AR.flops_per_token(16) < preset("tiny").flops_per_token(16)  # causal: half attention


def _greedy_by_full_forwards(params, prompt, gen_length):
    """Reference decoder: one uncached forward over the whole prefix per new token."""
    seq = list(prompt)
    for _ in range(gen_length):
        logits = transformer.apply(params, AR, jnp.asarray([seq]))
        seq.append(int(jnp.argmax(logits[0, -1])))
    return seq


def test_cached_greedy_decoding_equals_full_forwards_and_ignores_left_padding(params):
    prompts = [[1, 17, 30, 41, 52, 60], [1, 99, 7]]
    width = max(map(len, prompts))
    tokens = np.full((2, width), AR.pad_token_id, np.int32)
    mask = np.zeros((2, width), np.int32)
    for r, p in enumerate(prompts):
        tokens[r, width - len(p) :], mask[r, width - len(p) :] = p, 1
    canvas = np.asarray(autoregressive.generate(params, AR, tokens, mask, gen_length=6))
    for r, p in enumerate(prompts):
        expect = _greedy_by_full_forwards(params, p, 6)[len(p) :]
        stop = next(
            (j for j, t in enumerate(expect) if t in (AR.eos_token_id, AR.eot_token_id)), None
        )
        if stop is not None:  # after a stop token the row is EOS padding
            expect = expect[: stop + 1] + [AR.eos_token_id] * (len(expect) - stop - 1)
        assert canvas[r, width:].tolist() == expect


def test_temperature_sampling_is_keyed(params):
    prompt = np.array([[1, 17, 30]], np.int32)
    with pytest.raises(ValueError, match="pass rng"):
        autoregressive.generate(params, AR, prompt, gen_length=4, temperature=1.0)
    a, b, c = (
        np.asarray(
            autoregressive.generate(
                params,
                AR,
                np.repeat(prompt, 8, 0),
                gen_length=8,
                temperature=5.0,
                rng=jax.random.key(k),
            )
        )
        for k in (0, 0, 1)
    )
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len({tuple(row) for row in a}) > 1  # rows get independent noise


def test_sequence_log_prob_is_the_exact_sum(params):
    tokens = np.array([[1, 17, 30, 41, 52], [2, 1, 99, 7, 8]], np.int32)  # row 2: left-padded
    mask = np.array([[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]], np.int32)
    prompt_lengths = np.array([2, 3])
    got = autoregressive.sequence_log_prob(
        params, AR, jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(prompt_lengths)
    )
    for r, (row, start) in enumerate([(tokens[0], 0), (tokens[1, 1:], 1)]):
        logp = _log_softmax(transformer.apply(params, AR, jnp.asarray(row[None])))[0]
        first = prompt_lengths[r] - start
        direct = sum(logp[i - 1, row[i]] for i in range(first, len(row)))
        np.testing.assert_allclose(got[r], direct, rtol=1e-5)


def test_each_kind_is_refused_by_the_other_kinds_tools(params, tmp_path):
    prompt = np.array([[1, 17, 30]], np.int32)
    with pytest.raises(ValueError, match="kind='autoregressive'.*lladax.diffusion.autoregressive"):
        sampling.generate(params, AR, prompt, steps=4, gen_length=4, block_length=4)
    with pytest.raises(ValueError, match="needs a autoregressive model|kind='diffusion'"):
        autoregressive.generate(params, preset("tiny"), prompt, gen_length=4)
    with pytest.raises(
        ValueError, match="only LLaDA \\(diffusion\\) and block-diffusion models export"
    ):
        convert.save_hf(tmp_path / "hf", AR, params)
    with pytest.raises(ValueError, match="LEFT-padded"):
        autoregressive.generate(params, AR, prompt, np.array([[1, 1, 0]]), gen_length=4)


def test_cli_trains_samples_and_guards_an_autoregressive_run(tmp_path, capsys):
    run = tmp_path / "ar"
    base = [
        "train",
        "--config",
        str(ROOT / "configs" / "tiny.py"),
        "--workdir",
        str(run),
        "--config.log.progress=false",
        "--config.eval.every=0",
    ]
    assert main([*base, "--config.model.kind=autoregressive", "--config.train.steps=3"]) == 0
    capsys.readouterr()
    assert (
        main(["sample", "--checkpoint", str(run), "--prompt", "The list", "--gen-length", "8"]) == 0
    )
    assert capsys.readouterr().out.strip() != ""
    assert main(["sample", "--checkpoint", str(run), "--infill", "A <mask> b"]) != 0
    assert "need a diffusion model" in capsys.readouterr().err
    # Resuming the run as the other kind (same shapes, other objective) is refused.
    assert main([*base, "--config.train.steps=4"]) != 0
    assert "kind='autoregressive' model but this run is kind='diffusion'" in capsys.readouterr().err


def test_bad_decoding_arguments_are_one_line_errors(params):
    prompt = np.array([[1, 17, 30]], np.int32)
    with pytest.raises(ValueError, match="gen_length must be positive"):
        autoregressive.generate(params, AR, prompt, gen_length=0)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        autoregressive.generate(params, AR, prompt, gen_length=2, temperature=-1.0)
    with pytest.raises(ValueError, match="attention_mask shape"):
        autoregressive.generate(params, AR, prompt, np.ones((1, 2)), gen_length=2)
