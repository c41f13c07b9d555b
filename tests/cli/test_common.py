"""The sampling flags of `lladax sample` / `lladax chat` (`lladax.cli.common`): one per
`SamplerConfig` option, its defaults and choices, checked by `sampler_config_from_args`."""

import argparse

import pytest

from lladax.cli.common import add_fast_args, add_sampling_args, sampler_config_from_args
from lladax.diffusion.sampler_config import SamplerConfig


def test_steps_default_is_gen_length_and_zero_is_not_a_default():
    """`--steps 0` used to become gen_length through `args.steps or ...`."""
    p = argparse.ArgumentParser()
    add_sampling_args(p)
    args = p.parse_args(["--gen-length", "16", "--block-length", "4"])
    sampler = sampler_config_from_args(args).resolved()
    assert (sampler.steps, sampler.block_length) == (16, 4)
    with pytest.raises(ValueError, match="--steps 0 must be >= 1"):
        sampler_config_from_args(p.parse_args(["--steps", "0"]))


def _cli(*argv, fast_flags=True, **defaults):
    """(parser, SamplerConfig of argv) for the sampling flags (and the fast ones)."""
    p = argparse.ArgumentParser()
    add_sampling_args(p, SamplerConfig(**defaults) if defaults else None)
    if fast_flags:
        add_fast_args(p)
    return p, sampler_config_from_args(p.parse_args(list(argv)))


def test_sampling_flags_come_from_the_sampler_config():
    p, sampler = _cli()
    assert sampler == SamplerConfig()  # flag defaults are the config's
    actions = {a.dest: a for a in p._actions}
    assert tuple(actions["remasking"].choices) == SamplerConfig.REMASKING
    assert tuple(actions["cache"].choices) == SamplerConfig.CACHE_MODES
    for name in SamplerConfig.options():  # every option is a flag of the same name
        assert name in actions, name
    _, chat = _cli(fast_flags=False, gen_length=128)
    assert chat == SamplerConfig(gen_length=128)
    _, sampler = _cli("--gen-length", "8", "--temperature", "0.5", "--early-exit", "--fast")
    assert sampler == SamplerConfig(
        gen_length=8, temperature=0.5, early_exit=True, cache="dual", threshold=0.9
    )
