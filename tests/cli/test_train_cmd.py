"""`lladax train`'s preflight: every bad input is refused in one line before JAX starts and
before anything is written (the run config, --stop-after, data source, tokenizer, init_from and
workdir)."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


# --- refused before JAX starts (issue 21) ------------------------------------------------------
@pytest.fixture
def no_jax_start(monkeypatch):
    """Fail the test if `lladax train` gets as far as starting JAX (distributed.initialize is
    the first device call): a preflight refusal must come before it."""
    from lladax.train import distributed

    def started(*args, **kwargs):
        raise AssertionError("JAX was started before the refusal")

    monkeypatch.setattr(distributed, "initialize", started)


def _dirs(tmp_path):
    """Directories a user might hand to --workdir / init_from by mistake."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    hf = tmp_path / "hf_model"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / "manifest.json").write_text("{}")
    (tmp_path / "a_file").write_text("x")
    return home, hf, prepared


PREFLIGHT = [  # (extra argv, words of the one-line error); every one is refused before JAX starts
    (["--config.train.steps=-3"], "train.steps=-3 must be an int >= 0"),
    (["--config.data.seq_len=256"], "data.seq_len=256 is longer than model.max_seq_len=128"),
    (["--stop-after", "0"], "--stop-after 0 must be a step >= 1"),
    (["--stop-after", "-2"], "--stop-after -2 must be a step >= 1"),
    (["--config.train.lr=-0.1"], "train.lr=-0.1 must be a number >= 0"),
    (["--config.train.warmup_steps=-1"], "train.warmup_steps=-1 must be an int >= 0"),
    (["--config.train.decay_fraction=1.5"], "train.decay_fraction=1.5 must be a number in [0, 1]"),
    (["--config.train.grad_accum=0"], "train.grad_accum=0 must be an int >= 1"),
    (["--config.train.batch_size=0"], "train.batch_size=0 must be an int >= 1"),
    (["--config.train.b2=1.0"], "train.b2=1.0 must be a number in [0, 1)"),
    (["--config.train.mask_eps=0.0"], "train.mask_eps=0.0 must be a number in (0, 1)"),
    (
        ["--config.data.format=xml"],
        "data.format='xml' must be one of ('text', 'chat', 'preference')",
    ),
    (["--config.data.seq_len=1"], "data.seq_len=1 must be an int >= 2"),
    (["--config.data.workers=-1"], "data.workers=-1 must be an int >= 0"),
    (["--config.data.min_answer_len=32"], "data.min_answer_len=32 leaves no room"),
    (["--config.data.field="], "data.field='' must be a non-empty string"),
    (["--config.eval.batch_size=0"], "eval.batch_size=0 must be an int >= 1"),
    (["--config.eval.every=-1"], "eval.every=-1 must be an int >= 0"),
    (["--config.log.every=0"], "log.every=0 must be an int >= 1"),
    (["--config.checkpoint.keep=0"], "checkpoint.keep=0 must be an int >= 1"),
    (["--config.checkpoint.every=-5"], "checkpoint.every=-5 must be an int >= 0"),
    (["--config.mesh.data=0"], "mesh.data=0 must be -1 (fill) or an int >= 1"),
    (["--config.mesh.fsdp=-1"], "at most one of them may be -1"),
    (["--config.mesh.dcn_data=0"], "mesh.dcn_data=0 must be an int >= 1"),
    (["--config.model.rope_theta=0.0"], "rope_theta=0.0 must be a number > 0"),
    (["--config.data.source={tmp}/no_such.txt"], "no_such.txt does not exist"),
    (["--config.data.tokenizer={tmp}/no.model"], "data.tokenizer='{tmp}/no.model' does not exist"),
    (["--config.checkpoint.init_from={tmp}/nowhere"], "init_from='{tmp}/nowhere' does not exist"),
    (["--config.checkpoint.init_from={tmp}/home"], "holds neither checkpoints/ nor config.json"),
    (["--workdir", "{tmp}/home"], "--workdir {tmp}/home is not empty and is not a training run"),
    (["--workdir", "{tmp}/hf_model"], "is not empty and is not a training run"),
    (["--workdir", "{tmp}/prepared"], "is not empty and is not a training run"),
    (["--workdir", "{tmp}/a_file"], "--workdir {tmp}/a_file is a file"),
    (["--workdir", "{tmp}/a_file/run"], "is not writable ({tmp}/a_file is not a directory)"),
    (["--workdir", ""], "--workdir is empty"),
    (
        ["--config.train.block_curriculum=1:10,8"],
        "train.block_curriculum='1:10,8' only applies to model.kind='block_diffusion'",
    ),
    (["--config.train.block_curriculum=1,8"], "stage '1' needs its steps (SIZE:STEPS)"),
]


@pytest.mark.parametrize("extra, words", PREFLIGHT, ids=[" ".join(e) for e, _ in PREFLIGHT])
def test_bad_run_is_refused_before_jax_starts(tmp_path, cli_error, no_jax_start, extra, words):
    _dirs(tmp_path)
    argv = [
        "train",
        "--config",
        ROOT / "configs" / "tiny.py",
        "--workdir",
        tmp_path / "run",
        "--config.data.seq_len=32",
        *[a.replace("{tmp}", str(tmp_path)) for a in extra],
    ]
    line = cli_error(argv, untouched=[tmp_path])
    assert words.replace("{tmp}", str(tmp_path)) in line, line
    assert not (tmp_path / "run").exists()  # nothing written, not even the workdir


@pytest.mark.parametrize(
    "extra, words",
    [
        (
            ["--config.train.block_curriculum=1:10,8"],
            "train.block_curriculum='1:10,8' ends at block size 8 but model.block_size=16",
        ),
        (["--config.train.block_curriculum=1:10,4:5"], "the last stage '4:5' runs to the end"),
        (["--config.model.block_size=0"], "ModelConfig.block_size=0 must be a positive int"),
    ],
)
def test_bad_block_diffusion_run_is_refused_before_jax_starts(
    tmp_path, cli_error, no_jax_start, extra, words
):
    argv = ["train", "--config", ROOT / "configs" / "bd_small.py", "--workdir", tmp_path / "run"]
    line = cli_error([*argv, *extra], untouched=[tmp_path])
    assert words in line, line
