"""The sampler against the PyTorch reference goldens (tiny_llada), plus its fast paths.

Exact cases are token-for-token (output and every step of history); stochastic cases use the
golden README's TV rule. Compiled programs are shared between tests through jit's cache, so
every test reuses shapes/options that another test already compiled where it can.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lladax.diffusion import denoise, sampling
from lladax.diffusion.sampler_config import SamplerConfig
from lladax.model import transformer
from lladax.model.sharding import make_mesh, named_sharding, tree_shardings

# same lookup as conftest.py; needed at collection time to parametrize over the manifest
FIXTURES = Path(
    os.environ.get("LLADAX_FIXTURES", Path(__file__).resolve().parents[3] / "shared" / "fixtures")
)
MANIFEST = json.loads((FIXTURES / "tiny_llada" / "golden" / "manifest.json").read_text())
GEN_KEYS = (
    "steps",
    "gen_length",
    "block_length",
    "temperature",
    "cfg_scale",
    "remasking",
    "logits_eos_inf",
    "confidence_eos_eot_inf",
)


def _cases(function: str) -> list[dict]:
    return [c for c in MANIFEST["cases"] if c["function"] == function]


def _args(case: dict, data: dict) -> tuple[np.ndarray, np.ndarray | None, dict]:
    kw = case["kwargs"]
    am = kw.get("attention_mask")
    mask = data[am["npz"]] if isinstance(am, dict) else None
    prompt = data[kw["prompt"]["npz"]]
    if "runs" in kw:  # generate_stats: draw `runs` samples in one batch
        prompt = np.repeat(prompt, kw["runs"], axis=0)
    return prompt, mask, {k: kw[k] for k in GEN_KEYS if k in kw}


def _run_case(tiny_llada, golden, name: str, *, window: bool = True, **extra):
    """The golden case through `generate`; window=False through `generate_with(window=False)`,
    which runs every forward on the whole canvas."""
    cfg, params = tiny_llada
    case = next(c for c in MANIFEST["cases"] if c["name"] == name)
    data = golden(name)
    prompt, mask, kw = _args(case, data)
    if window:
        return data, prompt, sampling.generate(params, cfg, prompt, mask, **{**kw, **extra})
    rng = extra.pop("rng", None)
    out = sampling.generate_with(
        params, cfg, prompt, mask, SamplerConfig(**kw), rng, window=False, **extra
    )
    return data, prompt, out


def _check_early_exit(cfg, out, stats, full: np.ndarray, P: int) -> None:
    """Early exit returns the full run's answers; canvases identical through the stop token."""
    out = np.asarray(out)
    done = np.asarray(stats["done_step"]) < int(stats["steps"])
    for r in range(out.shape[0]):
        ans = sampling.decode_answer(out[r], P, cfg)
        assert ans == sampling.decode_answer(full[r], P, cfg)
        if done[r]:  # frozen: identical through the first stop token, EOS-padded masks after
            np.testing.assert_array_equal(out[r, : P + len(ans) + 1], full[r, : P + len(ans) + 1])
        else:
            np.testing.assert_array_equal(out[r], full[r])


# Checks that reuse one compiled program live in one test, so pytest-xdist never compiles the
# same program on two workers (compilation dominates this file's run time).
@pytest.mark.parametrize("name", [c["name"] for c in _cases("generate")])
def test_generate_matches_reference(tiny_llada, golden, name):
    cfg, params = tiny_llada
    data, prompt, (out, hist, stats) = _run_case(
        tiny_llada, golden, name, return_history=True, return_stats=True
    )
    np.testing.assert_array_equal(np.asarray(out), data["output"])
    assert hist.shape == data["history"].shape
    for g in range(hist.shape[0]):
        np.testing.assert_array_equal(np.asarray(hist[g]), data["history"][g], err_msg=f"step {g}")
    n_fwd, n_win = int(stats["forward_passes"]), int(stats["window_passes"])
    if name == "gen_prompt_with_mask":  # a mask left of the block forces the full-canvas path
        assert n_win < n_fwd
    else:  # the normal case runs the block window every step
        assert n_win == n_fwd > 0
    if name == "gen_more_steps_than_tokens":  # 4 steps with zero budget run no forward
        assert n_fwd == 8 and int(stats["steps_saved"]) == 4

    # early exit (a traced flag: same compiled program) gives the same answers
    compiled = sampling._run._cache_size()
    _, _, (early, _, stats) = _run_case(
        tiny_llada, golden, name, early_exit=True, return_history=True, return_stats=True
    )
    _check_early_exit(cfg, early, stats, data["output"], prompt.shape[1])
    assert sampling._run._cache_size() == compiled

    if name == "gen_semi_ar":
        # row 1's answer ends in the first block: a batch of it stops running forwards early
        rows = prompt[[1, 1]]
        early, _, stats = sampling.generate(
            params,
            cfg,
            rows,
            steps=12,
            gen_length=24,
            block_length=8,
            early_exit=True,
            return_history=True,
            return_stats=True,
        )
        assert int(stats["steps_saved"]) >= 4 and int(stats["forward_passes"]) <= 8
        _check_early_exit(cfg, early, stats, data["output"][[1, 1]], prompt.shape[1])

    if name in ("gen_semi_ar", "gen_cfg_padded", "gen_prompt_with_mask"):
        # the block-window path gives the same tokens as forcing full-canvas logits every step
        _, _, (full, full_hist) = _run_case(
            tiny_llada, golden, name, window=False, return_history=True
        )
        np.testing.assert_array_equal(np.asarray(full), np.asarray(out))
        np.testing.assert_array_equal(np.asarray(full_hist), np.asarray(hist))


@pytest.mark.parametrize("name", [c["name"] for c in _cases("generate_stats")])
def test_generate_distribution(tiny_llada, golden, name):
    cfg, _ = tiny_llada
    case = next(c for c in MANIFEST["cases"] if c["name"] == name)
    runs = case["kwargs"]["runs"]
    # one call, `runs` copies of the prompt: each row gets independent noise
    data, prompt, out = _run_case(tiny_llada, golden, name, rng=jax.random.key(0))
    out = np.asarray(out)
    assert out.shape[0] == runs and len({tuple(r) for r in out}) > 1
    gen = out[:, prompt.shape[1] :]
    ref = data["hist"] / data["hist"].sum(axis=1, keepdims=True)
    ours = (
        np.stack([np.bincount(gen[:, j], minlength=cfg.vocab_size) for j in range(gen.shape[1])])
        / runs
    )
    tv = 0.5 * np.abs(ours - ref).sum(axis=1)
    assert tv.max() <= case["tolerance"]["tv_max"], tv
    if name == "stats_random_T07":
        # noise is keyed per (step, position): window and full paths draw the same samples
        _, _, full = _run_case(tiny_llada, golden, name, window=False, rng=jax.random.key(0))
        np.testing.assert_array_equal(np.asarray(full), out)


def test_sharded_equals_single_device(tiny_llada, golden):
    cfg, params = tiny_llada
    data = golden("gen_semi_ar")
    prompt = np.concatenate([data["prompt"]] * 2)  # batch 4 over data×fsdp = 4 shards
    kw = dict(steps=12, gen_length=24, block_length=8)
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    p_sh = jax.device_put(params, tree_shardings(mesh, transformer.param_logical_axes(cfg)))
    x_sh = jax.device_put(jnp.asarray(prompt, jnp.int32), named_sharding(mesh, ("batch", None)))
    with jax.set_mesh(mesh):
        out = sampling.generate(p_sh, cfg, x_sh, **kw)
    assert len(out.sharding.device_set) == 8
    # single-device result == golden (test_generate_matches_reference), rows are independent
    np.testing.assert_array_equal(np.asarray(out), np.concatenate([data["output"]] * 2))


def test_one_compilation_per_shape(tiny_llada):
    cfg, params = tiny_llada
    prompt = np.arange(3, 8, dtype=np.int32)[None]  # a shape no other test uses
    sampler = SamplerConfig(steps=4, gen_length=4, block_length=2)
    cached = sampling._run._cache_size()
    # window=False: the cheaper program to compile
    a = sampling.generate_with(params, cfg, prompt, None, sampler, window=False)
    # same shapes, other token values and other values of the traced options: no new program
    flags = dict(logits_eos_inf=True, confidence_eos_eot_inf=True, early_exit=True)
    other = dataclasses.replace(sampler, **flags)
    assert other.static() == sampler.static()
    b = sampling.generate_with(params, cfg, prompt + 1, None, other, window=False)
    assert sampling._run._cache_size() - cached == 1
    assert a.shape == b.shape == (1, 9)


def test_decode_answer(tiny_llada):
    cfg, _ = tiny_llada
    row = [7, 7, 9, 10, cfg.eot_token_id, 11, cfg.eos_token_id]
    assert sampling.decode_answer(row, 2, cfg) == [9, 10]
    assert sampling.decode_answer([1, 5, 6], 1, cfg) == [5, 6]
    assert sampling.decode_answer([1, cfg.eos_token_id, 6], 1, cfg) == []


def test_transfer_schedule():
    assert sampling.transfer_schedule is denoise.transfer_schedule  # where the design card has it
    sched = np.asarray(sampling.transfer_schedule(jnp.array([10, 8, 0]), 3))
    np.testing.assert_array_equal(sched, [[4, 3, 3], [3, 3, 2], [0, 0, 0]])


OK = dict(steps=4, gen_length=8, block_length=4)


@pytest.mark.parametrize(
    "prompt,mask,kw,match",
    [
        (np.ones((1, 4), int), None, dict(OK, gen_length=6), "not a multiple of block_length"),
        (np.ones((1, 4), int), None, dict(OK, steps=3), "multiple of the number of blocks"),
        (np.ones((1, 0), int), None, OK, "non-empty"),
        (np.ones((4,), int), None, OK, "non-empty"),
        (np.ones((1, 4), int), None, dict(OK, remasking="topk"), "unknown remasking"),
        (np.ones((1, 4), int), None, dict(OK, cfg_scale=-1.0), "cfg_scale"),
        (np.ones((1, 4), int), None, dict(OK, temperature=-0.5), "temperature"),
        (np.full((1, 4), 10_000), None, OK, "outside the model vocabulary"),
        (np.ones((1, 4), int), np.ones((1, 3), int), OK, "attention_mask shape"),
        (np.ones((1, 4), int), None, dict(OK, temperature=0.5), "rng is required"),
        (np.ones((1, 4), int), None, dict(OK, remasking="random"), "rng is required"),
        (np.ones((1, 4), int), None, dict(OK, steps=0), "steps must be a positive int"),
    ],
)
def test_bad_inputs(tiny_llada, prompt, mask, kw, match):
    cfg, params = tiny_llada
    with pytest.raises(ValueError, match=match):
        sampling.generate(params, cfg, prompt, mask, **kw)


def test_long_canvas_warns(tiny_llada, monkeypatch):
    cfg, params = tiny_llada
    # the warning is decided before compiling; stub the program out to keep the test instant
    monkeypatch.setattr(sampling, "_run", lambda *a, **k: (None, None, None))
    with pytest.warns(UserWarning, match="exceeds the model's max_seq_len"):
        sampling.generate(
            params, cfg, np.ones((1, 8), int), steps=1, gen_length=256, block_length=256
        )


def test_infill_of_trailing_masks_equals_generate(tiny_llada, golden):
    """A canvas [prompt | masks] filled as one block is exactly `generate` (pure diffusion)."""
    cfg, params = tiny_llada
    case = golden("gen_pure_diffusion")
    expected = case["output"]
    assert not (expected == cfg.mask_token_id).any()  # infill never proposes the mask id
    P = case["prompt"].shape[1]
    canvas = np.concatenate([case["prompt"], np.full((2, 16), cfg.mask_token_id)], axis=1)
    filled = sampling.infill(params, cfg, canvas, steps=16, block_length=canvas.shape[1])
    np.testing.assert_array_equal(np.asarray(filled)[:, P:], expected[:, P:])
    np.testing.assert_array_equal(np.asarray(filled)[:, :P], case["prompt"])


def test_infill_fills_inner_spans_only(tiny_llada):
    cfg, params = tiny_llada
    m = cfg.mask_token_id
    canvas = np.array([[1, 20, m, m, m, 40, 50, m, m, 60], [1, m, 21, 22, 23, 24, 25, 26, 27, m]])
    filled = np.asarray(sampling.infill(params, cfg, canvas, steps=3))
    keep = canvas != m
    np.testing.assert_array_equal(filled[keep], canvas[keep])
    assert (filled != m).all()
    with pytest.raises(ValueError, match="at least one mask id"):
        sampling.infill(params, cfg, np.array([[1, 2, 3]]), steps=1)
