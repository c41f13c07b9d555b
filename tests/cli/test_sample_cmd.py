"""`lladax sample` with a block-diffusion checkpoint (`lladax.cli.sample_cmd`): the kind's own
sampler, its stats on stderr, and the LLaDA-only flags refused in one line. The checkpoint is a
tiny random block-diffusion model handed to the command in place of a loaded run, with a
character tokenizer so the prompts have known lengths: the batch below has the shape of
tests/diffusion/test_block_sampling.py (3 prompts of at most 6 ids, gen_length 16), so the
sampler's program is that test's."""

from __future__ import annotations

import jax
import pytest

from lladax import config
from lladax.cli import main, sample_cmd
from lladax.model import transformer

BD = config.preset("tiny", kind="block_diffusion", block_size=4, init_std=0.2)


class CharTokenizer:
    """BOS = 1, one id per byte of text (10 + byte % 200): no special id, no mask id."""

    bos_id = 1

    def encode(self, text: str) -> list[int]:
        return [10 + b % 200 for b in text.encode()]

    def decode(self, ids) -> str:
        return "".join(chr(i) if 10 <= i < 210 else f"<{i}>" for i in ids)


@pytest.fixture(scope="module")
def params():
    return transformer.init_params(BD, jax.random.key(0))


@pytest.fixture
def bd_run(params, monkeypatch, tmp_path):
    """A checkpoint path whose loading gives the tiny block-diffusion model."""
    monkeypatch.setattr(sample_cmd, "check_model_path", lambda *a: None)
    monkeypatch.setattr(sample_cmd, "load_model", lambda *a: (BD, params, CharTokenizer()))
    return str(tmp_path / "bd")


def test_sample_decodes_block_diffusion_with_stats(bd_run, capsys):
    prompts = ["--prompt", "abcde", "--prompt", "ab", "--prompt", "abcd"]
    assert main(["sample", "--checkpoint", bd_run, *prompts, "--gen-length", "16"]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("block diffusion (block_size 4): model evaluations per prompt [")
    assert "tokens before EOS [" in captured.err and captured.err.count("\n") == 1
    out = captured.out.splitlines()
    assert [line for line in out if line.startswith("### ")] == ["### abcde", "### ab", "### abcd"]


@pytest.mark.parametrize(
    "extra, words",
    [
        (
            ["--prompt", "ab", "--show-steps"],
            "this model is block diffusion (kind='block_diffusion')",
        ),
        (["--infill", "a <mask> b"], "block by block: use --prompt"),
    ],
)
def test_llada_only_flags_are_refused(bd_run, cli_error, extra, words):
    line = cli_error(["sample", "--checkpoint", bd_run, *extra], code=2)
    assert words in line
