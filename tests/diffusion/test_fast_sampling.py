"""Fast decoding (KV caches, threshold / factor parallel commits) on the tiny fixture.

Programs are compiled once per (shape, static options) and reused across tests through jit's
cache, so every test here uses the one prompt shape below (or a golden case's).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lladax.diffusion import fast_sampling, sampling
from lladax.diffusion.sampler_config import SamplerConfig
from lladax.model import transformer
from lladax.model.sharding import make_mesh, named_sharding, tree_shardings

KW = dict(gen_length=16, block_length=8)  # two blocks
P = 6


@pytest.fixture(scope="module")
def prompt() -> np.ndarray:
    # ids 4..299: no BOS/EOS/EoT (1, 2, 3) and no mask (310), so no row stops early by itself
    return np.asarray(jax.random.randint(jax.random.key(0), (3, P), 4, 300), np.int32)


def _valid(cfg, out, prompt) -> None:
    """Prompt untouched, every generated position decoded."""
    out = np.asarray(out)
    np.testing.assert_array_equal(out[:, :P], prompt)
    assert not (out == cfg.mask_token_id).any()


def _reference(params, cfg, row: np.ndarray, *, steps: int, threshold=None, factor=None):
    """Threshold / factor decoding of ONE row, written plainly: a Python loop, one uncached
    forward per step, float64 numpy confidences. Returns (canvas, number of forwards)."""
    G, bl, mask = KW["gen_length"], KW["block_length"], cfg.mask_token_id
    x = np.concatenate([row, np.full(G, mask)]).astype(np.int32)
    s = steps // (G // bl)
    nfe = 0
    for lo in range(P, P + G, bl):
        m = int((x[lo : lo + bl] == mask).sum())
        for i in range(s):
            masked = np.flatnonzero(x[lo : lo + bl] == mask)
            if masked.size == 0:
                break
            logits = np.asarray(transformer.forward(params, cfg, x[None]), np.float64)[
                0, lo : lo + bl
            ]
            nfe += 1
            p = np.exp(logits - logits.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            x0, conf = logits.argmax(-1), p.max(-1)
            order = sorted(masked, key=lambda j: (-conf[j], j))
            k = max(m // s + (i < m % s), 1)
            for n, j in enumerate(order, start=1):
                passes = threshold is not None and conf[j] >= threshold
                passes |= factor is not None and (n + 1) * (1 - conf[j]) <= factor
                if n <= k or passes:
                    x[lo + j] = x0[j]
    return x, nfe


def test_uncached_without_parallel_commits_equals_generate(tiny_llada, prompt):
    cfg, params = tiny_llada
    plain = np.asarray(sampling.generate(params, cfg, prompt, steps=16, **KW))
    for threshold in (None, 1.5):  # > 1: no token is ever committed beyond the schedule's one
        out, stats = fast_sampling.generate(
            params, cfg, prompt, cache="none", threshold=threshold, return_stats=True, **KW
        )
        np.testing.assert_array_equal(np.asarray(out), plain)
        np.testing.assert_array_equal(stats["nfe"], [16] * 3)
    # early exit (a traced flag: same program) keeps the answers
    out = fast_sampling.generate(
        params, cfg, prompt, cache="none", threshold=1.5, early_exit=True, **KW
    )
    for a, b in zip(np.asarray(out), plain, strict=True):
        assert sampling.decode_answer(a, P, cfg) == sampling.decode_answer(b, P, cfg)


def test_cfg_uncached_equals_reference_golden(tiny_llada, golden):
    cfg, params = tiny_llada
    data = golden("gen_cfg")  # cfg_scale 1.5, steps 8, gen 16, block 8, padded prompts
    out, stats = fast_sampling.generate(
        params,
        cfg,
        data["prompt"],
        data["attention_mask"],
        steps=8,
        gen_length=16,
        block_length=8,
        cfg_scale=1.5,
        cache="none",
        return_stats=True,
    )
    np.testing.assert_array_equal(np.asarray(out), data["output"])
    np.testing.assert_array_equal(stats["nfe"], [8, 8])


def test_cached_forward_at_block_start_equals_uncached(tiny_llada, prompt):
    cfg, params = tiny_llada
    apply = jax.jit(
        functools.partial(transformer.apply, cfg=cfg),
        static_argnames=("query_size", "return_cache"),
    )
    tokens = jnp.asarray(np.concatenate([prompt, np.full((3, 16), cfg.mask_token_id)], 1))
    tokens = tokens.at[:, P : P + 5].set(7)  # a partly decoded canvas
    full = apply(params, tokens=tokens)
    start, bl = P + 8, 8
    logits, cache = apply(
        params, tokens=tokens, query_start=start, query_size=bl, return_cache=True
    )
    assert cache.k.shape == (cfg.n_layers, 3, P + 16, cfg.n_kv_heads, cfg.head_dim)
    np.testing.assert_allclose(logits, full[:, start : start + bl], atol=2e-5)
    # a cache that is exact for the canvas: dual (block only) and prefix (block + suffix) steps
    dual = apply(params, tokens=tokens[:, start : start + bl], cache=cache, cache_start=start)
    np.testing.assert_allclose(dual, full[:, start : start + bl], atol=2e-5)
    pre = apply(params, tokens=tokens[:, P:], cache=cache, cache_start=P, query_size=bl)
    np.testing.assert_allclose(pre, full[:, P : P + bl], atol=2e-5)
    # the cache is only read outside the written window: garbage inside it changes nothing
    junk = transformer.KVCache(*(c.at[:, :, start : start + bl].set(9.0) for c in cache))
    np.testing.assert_allclose(
        apply(params, tokens=tokens[:, start : start + bl], cache=junk, cache_start=start),
        dual,
        atol=1e-6,
    )
    # evaluation_flops (per row; 3 rows) against XLA's count (+ norms, softmax, RoPE). XLA counts
    # a loop body once; with a query window the layer scan of this 2-layer model has 1 iteration.
    n = P + 16
    for fresh_start in (0, P, start):  # uncached, prefix step, dual step
        kw = dict(
            tokens=tokens[:, fresh_start : fresh_start + (bl if fresh_start == start else n)],
            query_start=start - fresh_start,
            query_size=bl,
        )
        if fresh_start:
            kw.update(cache=cache, cache_start=fresh_start)
        cost = apply.lower(params, **kw).cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        want = 3 * fast_sampling.evaluation_flops(
            cfg, keys=n, fresh=kw["tokens"].shape[1], queries=bl
        )
        assert 1.0 <= cost["flops"] / want < 1.05, (fresh_start, cost["flops"], want)


def test_threshold_zero_finishes_every_block_in_one_step(tiny_llada, prompt):
    cfg, params = tiny_llada
    outs = []
    for cache in fast_sampling.CACHE_MODES:
        out, stats = fast_sampling.generate(
            params, cfg, prompt, cache=cache, threshold=0.0, return_stats=True, **KW
        )
        _valid(cfg, out, prompt)
        np.testing.assert_array_equal(stats["nfe"], [2] * 3)
        np.testing.assert_array_equal(stats["block_evaluations"], [1, 1])
        outs.append(np.asarray(out))
        # one entry point for any SamplerConfig: a fast one runs this same program
        sampler = SamplerConfig(cache=cache, threshold=0.0, **KW)
        same, same_stats = sampling.generate_with(
            params, cfg, prompt, None, sampler, return_stats=True
        )
        np.testing.assert_array_equal(same, out)
        np.testing.assert_array_equal(same_stats["nfe"], stats["nfe"])
        with pytest.raises(ValueError, match="fast decoding .* keeps none: drop return_history"):
            sampling.generate_with(params, cfg, prompt, None, sampler, return_history=True)
    # each block is decoded entirely by its block-start forward, which is exact in every mode
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])


@pytest.mark.parametrize("rule", [dict(threshold=0.2), dict(factor=4.0)])
def test_threshold_and_factor_match_a_plain_reference_per_row(tiny_llada, prompt, rule):
    """Tokens and per-row NFE equal a one-row Python loop: rows finish independently."""
    cfg, params = tiny_llada
    out, stats = fast_sampling.generate(
        params, cfg, prompt, cache="none", return_stats=True, **rule, **KW
    )
    for r in range(prompt.shape[0]):
        ref, nfe = _reference(params, cfg, prompt[r], steps=16, **rule)
        np.testing.assert_array_equal(np.asarray(out[r]), ref)
        assert int(stats["nfe"][r]) == nfe
    assert int(stats["evaluations"]) == int(np.asarray(stats["block_evaluations"]).sum())
    assert int(stats["evaluations"]) < 16  # parallel commits saved evaluations
    if "threshold" in rule:
        assert len(set(np.asarray(stats["nfe"]).tolist())) > 1  # rows differ


def test_cached_nfe_counts_model_calls(tiny_llada, prompt, monkeypatch):
    """NFE of the dual cache = model calls (counted by a host callback) in which the row's
    block still had masks; batch evaluations = all calls."""
    cfg, params = tiny_llada
    calls: list[np.ndarray] = []
    real_apply = transformer.apply

    def counting_apply(params, cfg, tokens, *args, **kw):
        if kw.get("cache") is not None:  # the dual step: tokens are the block
            block = tokens
        else:  # the block-start forward: the block is the query window
            block = jax.lax.dynamic_slice_in_dim(tokens, kw["query_start"], kw["query_size"], 1)
        jax.debug.callback(lambda b: calls.append(np.asarray(b)), block)
        return real_apply(params, cfg, tokens, *args, **kw)

    monkeypatch.setattr(transformer, "apply", counting_apply)
    # a fresh program: a new function object, or jit would reuse the uninstrumented trace
    run = fast_sampling._run.__wrapped__
    monkeypatch.setattr(
        fast_sampling, "_run", jax.jit(lambda *a, **k: run(*a, **k), static_argnames=("cfg", "o"))
    )
    out, stats = fast_sampling.generate(
        params, cfg, prompt, cache="dual", threshold=0.2, return_stats=True, **KW
    )
    jax.effects_barrier()
    _valid(cfg, out, prompt)
    assert len(calls) == int(stats["evaluations"]) > 2
    live = np.stack([(c == cfg.mask_token_id).any(axis=1) for c in calls])  # [calls, batch]
    np.testing.assert_array_equal(np.asarray(stats["nfe"]), live.sum(axis=0))


def test_prefix_and_dual_caches_give_valid_close_outputs(tiny_llada, prompt):
    cfg, params = tiny_llada
    plain = np.asarray(fast_sampling.generate(params, cfg, prompt, cache="none", **KW))
    for cache in ("prefix", "dual"):
        out, stats = fast_sampling.generate(
            params, cfg, prompt, cache=cache, return_stats=True, **KW
        )
        _valid(cfg, out, prompt)
        np.testing.assert_array_equal(stats["nfe"], [16] * 3)  # the schedule: 1 token per step
        # the first step of each block is exact, so the blocks' first tokens agree
        assert (np.asarray(out)[:, P:] == plain[:, P:]).mean() >= 2 / 16
        out_early = fast_sampling.generate(
            params, cfg, prompt, cache=cache, threshold=0.2, early_exit=True, **KW
        )
        _valid(cfg, out_early, prompt)


def test_sharded_dual_cache_with_cfg_equals_single_device(tiny_llada, prompt):
    cfg, params = tiny_llada
    rows = np.concatenate([prompt, prompt[:1]])  # batch 4 over data×fsdp = 4 shards
    kw = dict(KW, cache="dual", threshold=0.2, cfg_scale=1.0, return_stats=True)
    single, s_stats = fast_sampling.generate(params, cfg, rows, **kw)
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    p_sh = jax.device_put(params, tree_shardings(mesh, transformer.param_logical_axes(cfg)))
    x_sh = jax.device_put(jnp.asarray(rows), named_sharding(mesh, ("batch", None)))
    with jax.set_mesh(mesh):
        out, stats = fast_sampling.generate(p_sh, cfg, x_sh, **kw)
    assert len(out.sharding.device_set) == 8
    np.testing.assert_array_equal(np.asarray(out), np.asarray(single))
    np.testing.assert_array_equal(stats["nfe"], s_stats["nfe"])
    _valid(cfg, out, rows)
    assert np.asarray(out)[3].tolist() == np.asarray(out)[0].tolist()  # rows are independent


def test_model_flops_from_block_counts(tiny_llada):
    cfg, _ = tiny_llada
    n, bl = 40, 8
    flops = functools.partial(fast_sampling.evaluation_flops, cfg, keys=n, queries=bl)
    assert flops(fresh=n) == cfg.forward_flops(n, bl)  # uncached: the one formula
    stats = {"block_evaluations": np.array([3, 0, 2])}  # block 1: every row already done
    kw = dict(batch=2, canvas_len=n, block_length=bl)
    assert fast_sampling.model_flops(cfg, stats, cache="none", **kw) == 2 * 5 * flops(fresh=n)
    assert fast_sampling.model_flops(cfg, stats, cache="dual", guided=True, **kw) == 4 * (
        2 * flops(fresh=n) + 3 * flops(fresh=bl)
    )
    # prefix: block b's steps run the block and everything right of it (n - 16 + b·8 from the
    # left: the canvas is 16 prompt + 24 generated)
    assert fast_sampling.model_flops(cfg, stats, cache="prefix", **kw) == 2 * (
        2 * flops(fresh=n) + 2 * flops(fresh=24) + flops(fresh=8)
    )


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(cache="paged"), "unknown cache mode"),
        (dict(threshold=0.9, factor=1.0), "not both"),
        (dict(threshold=-0.1), "threshold=-0.1 must be a number >= 0"),
        (dict(factor=0.0), "factor=0.0 must be a number > 0"),
        (dict(steps=3), "multiple of the number of blocks"),
        (dict(temperature=0.5), "rng is required"),
    ],
)
def test_bad_options_one_line(tiny_llada, prompt, kw, match):
    cfg, params = tiny_llada
    with pytest.raises(ValueError, match=match) as e:
        fast_sampling.generate(params, cfg, prompt, **{**KW, **kw})
    assert "\n" not in str(e.value)


def test_prompt_with_mask_rejected(tiny_llada, prompt):
    cfg, params = tiny_llada
    bad = prompt.copy()
    bad[0, 2] = cfg.mask_token_id
    with pytest.raises(ValueError, match="sampling.infill"):
        fast_sampling.generate(params, cfg, bad, **KW)


def test_cli_fast_flags(capsys):
    import argparse

    from lladax.cli import main
    from lladax.cli.common import add_fast_args, add_sampling_args, sampler_config_from_args

    parser = argparse.ArgumentParser()
    add_sampling_args(parser)
    add_fast_args(parser)

    def parsed(*argv):  # the fast-decoding options, None for the exact sampler
        s = sampler_config_from_args(parser.parse_args(list(argv)))
        return dict(cache=s.cache, threshold=s.threshold, factor=s.factor) if s.fast else None

    assert parsed() is None
    assert parsed("--fast") == dict(cache="dual", threshold=0.9, factor=None)
    assert parsed("--cache", "prefix") == dict(cache="prefix", threshold=0.9, factor=None)
    assert parsed("--threshold", "2") == dict(cache="dual", threshold=2.0, factor=None)
    assert parsed("--factor", "1") == dict(cache="dual", threshold=None, factor=1.0)
    # refused before any checkpoint is read: one line, exit code 2
    assert (
        main(["sample", "--checkpoint", "/no/such/run", "--prompt", "x", "--fast", "--show-steps"])
        == 2
    )
    err = capsys.readouterr().err
    assert "fast decoding applies to --prompt" in err and err.count("\n") == 1
