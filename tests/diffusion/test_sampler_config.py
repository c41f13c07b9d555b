"""`SamplerConfig`: the one owner of the samplers' options (defaults, resolution, rules worded per
surface, the static / traced split for jit). No model runs here: everything is decided before a
program is compiled. The surfaces built from it: tests/cli/test_cli.py (flags) and
tests/eval/test_model_args.py (lm-eval model args)."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from lladax.diffusion.sampler_config import FLAGS, KEYWORDS, MODEL_ARG, SamplerConfig


def test_defaults_and_resolution():
    c = SamplerConfig()
    assert (c.gen_length, c.steps, c.block_length) == (64, None, None)
    assert (c.temperature, c.cfg_scale, c.remasking) == (0.0, 0.0, "low_confidence")
    assert not (c.fast or c.needs_rng or c.early_exit)
    r = SamplerConfig(gen_length=32).resolved()
    assert (r.steps, r.block_length) == (32, 32)  # None -> gen_length: one token per step
    r = SamplerConfig(gen_length=32, steps=8, block_length=16).resolved()
    assert (r.steps, r.block_length) == (8, 16)
    assert r.resolved() == r


def test_static_part_is_hashable_and_holds_only_what_changes_the_program():
    base = SamplerConfig(gen_length=16, block_length=8, temperature=0.5, cfg_scale=1.0)
    static = base.static()
    assert hash(static) == hash(base.static()) and hash(base) == hash(dataclasses.replace(base))
    assert (static.steps, static.block_length, static.sample, static.guided) == (16, 8, True, True)
    # traced values: the same program
    for other in (
        dict(temperature=0.9),
        dict(cfg_scale=3.0),
        dict(logits_eos_inf=True, confidence_eos_eot_inf=True, early_exit=True),
    ):
        assert dataclasses.replace(base, **other).static() == static
    # structure: another program
    for other in (dict(temperature=0.0), dict(cfg_scale=0.0), dict(steps=8)):
        assert dataclasses.replace(base, **other).static() != static
    assert base.static(return_history=True) != static != base.static(window=False)


def test_traced_part_is_a_pytree_of_scalars():
    c = SamplerConfig(temperature=0.7, cache="dual", threshold=0.9, early_exit=True)
    traced = c.traced()
    leaves = jax.tree.leaves(traced)
    assert len(leaves) == 8 and all(np.ndim(v) == 0 for v in leaves)
    assert traced["temperature"].dtype == np.float32 and traced["early_exit"]
    assert np.isclose(traced["threshold"], 0.9) and traced["factor"] == -np.inf
    assert SamplerConfig().traced()["threshold"] == np.inf  # disabled: nothing passes
    assert SamplerConfig().traced(fill_masks=True)["logits_mask_inf"]


@pytest.mark.parametrize(
    "values, keyword, flag, model_arg",
    [
        (
            dict(steps=0),
            "steps must be a positive int",
            "--steps 0 must be >= 1",
            "model arg steps=0 must be >= 1",
        ),
        (
            dict(gen_length=8, block_length=3),
            "block_length=3 does not divide gen_length=8",
            "--block-length 3 does not divide --gen-length 8: pass a divisor of 8",
            "not a multiple of block_length",
        ),
        (
            dict(gen_length=8, block_length=4, steps=3),
            "steps=3 is not a multiple of the number of blocks 2",
            "--steps 3 is not a multiple of the number of blocks 2",
            "model arg steps=3 is not a multiple of",
        ),
        (
            dict(temperature=-1.0),
            "temperature=-1.0 must be a number >= 0",
            "--temperature -1.0 must be a finite number >= 0",
            "temperature=-1.0 must be >= 0",
        ),
        (
            dict(cfg_scale=float("nan")),
            "cfg_scale=nan must be a finite number >= 0",
            "--cfg-scale nan must be a finite number >= 0",
            "cfg_scale=nan must be a finite number >= 0",
        ),
        (
            dict(remasking="best"),
            "unknown remasking 'best'",
            "unknown --remasking 'best'",
            "unknown remasking 'best'",
        ),
        (
            dict(cache="dual", threshold=-0.1),
            "threshold=-0.1 must be a number >= 0",
            "--threshold -0.1 must be a finite number >= 0",
            "threshold=-0.1 must be >= 0",
        ),
        (
            dict(cache="dual", factor=0.0),
            "factor=0.0 must be a number > 0",
            "--factor 0.0 must be a finite number > 0",
            "factor=0.0 must be > 0",
        ),
        (dict(cache="dual", threshold=0.9, factor=1.0), "not both", "pass one of them", "both"),
        (dict(cache="paged"), "unknown cache mode 'paged'", "'paged'", "'paged'"),
        (dict(bogus=1), "unknown sampler option 'bogus'", "'--bogus'", "'bogus'"),
    ],
)
def test_one_rule_set_worded_per_surface(values, keyword, flag, model_arg):
    for spelling, words in ((KEYWORDS, keyword), (FLAGS, flag), (MODEL_ARG, model_arg)):
        with pytest.raises(ValueError) as e:
            SamplerConfig.parse(values, spelling)
        assert words in str(e.value) and "\n" not in str(e.value), (spelling, str(e.value))
    if "bogus" not in values:  # construction checks too, in the API's words
        with pytest.raises(ValueError, match=keyword):
            SamplerConfig(**values)


@pytest.mark.parametrize(
    "values, keyword, flag, model_arg",
    [(dict(threshold=0.9), "also set cache", "also set --cache", "also set cache")],
)
def test_rules_of_the_model_kind_worded_per_surface(values, keyword, flag, model_arg):
    """Threshold / factor without a cache mode: LLaDA's exact sampler has no such rule (fast
    decoding has), block diffusion's sampler always has. `for_kind` checks what depends on the
    kind, in the surface's words."""
    for spelling, words in ((KEYWORDS, keyword), (FLAGS, flag), (MODEL_ARG, model_arg)):
        sampler = SamplerConfig.parse(values, spelling)
        with pytest.raises(ValueError) as e:
            sampler.for_kind("diffusion", spelling)
        assert words in str(e.value) and "\n" not in str(e.value), (spelling, str(e.value))
    with pytest.raises(ValueError, match=keyword):
        SamplerConfig(**values).for_kind("diffusion")
    assert SamplerConfig(**values).for_kind("block_diffusion").threshold == 0.9


def test_early_exit_default_is_the_kinds():
    """None: off for LLaDA (the reference's canvas), on for block diffusion (variable length);
    an explicit value is kept. The traced flag of an unresolved config is LLaDA's."""
    c = SamplerConfig()
    assert c.early_exit is None and not c.traced()["early_exit"]
    assert c.for_kind("diffusion").early_exit is False
    assert c.for_kind("block_diffusion").early_exit is True
    assert SamplerConfig(early_exit=False).for_kind("block_diffusion").early_exit is False
    assert c.for_kind("block_diffusion").static() == c.static()  # a traced flag: one program


def test_parse_takes_the_rest_from_a_base():
    base = SamplerConfig(gen_length=1024)
    c = SamplerConfig.parse({"block_length": 256}, MODEL_ARG, base=base)
    assert (c.gen_length, c.resolved().steps, c.block_length) == (1024, 1024, 256)
    with pytest.raises(ValueError, match="does not divide gen_length=64"):
        SamplerConfig.parse({"block_length": 256})  # the default gen_length: 64


def test_rng_is_asked_for_only_when_something_is_random():
    assert SamplerConfig().rng_for(jax.random.key(0)) is None  # greedy: one program for all seeds
    with pytest.raises(ValueError, match="rng is required"):
        SamplerConfig(remasking="random").rng_for(None)
    key = jax.random.key(1)
    assert SamplerConfig(temperature=0.5).rng_for(key) is key
