"""The `lladax` console script: train end to end, resume, and one-line errors on bad input."""

import io
import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from lladax.cli import main
from lladax.store import layout, params_checkpoint

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs" / "tiny.py")


def _train(workdir, *extra):
    return main(
        [
            "train",
            "--config",
            TINY,
            "--workdir",
            str(workdir),
            "--config.log.progress=false",
            "--config.train.steps=4",
            "--config.eval.every=2",
            "--config.log.every=2",
            *extra,
        ]
    )


def test_train_saves_checkpoint_and_resumes(tmp_path, capsys):
    assert _train(tmp_path) == 0
    out = capsys.readouterr().out
    assert json.loads(out.splitlines()[0])["step"] == 4
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[0] == {"step": 0, "eval_loss": records[0]["eval_loss"]}
    assert {"loss", "tokens_per_s", "tokens_per_s_per_device", "step_s", "mfu", "eval_loss"} <= set(
        records[-1]
    )
    assert records[-1]["tokens_per_s_per_device"] == pytest.approx(
        records[-1]["tokens_per_s"] / jax.device_count()
    )
    assert (tmp_path / "tokenizer.model").exists()
    cfg, params = params_checkpoint.load_params(tmp_path)
    assert cfg.n_layers == 2 and params["wte"].shape == (cfg.vocab_size, cfg.d_model)
    # Resume: continues from step 4 to 6 instead of starting over.
    assert _train(tmp_path, "--config.train.steps=6") == 0
    assert layout.manager(tmp_path).latest_step() == 6
    steps = [
        json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps.count(0) == 1 and steps[-1] == 6


def test_interrupted_run_resumes_bit_exactly(tmp_path):
    """Stop at step 3 and rerun: same params as 6 uninterrupted steps (same batches, same noise)."""
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    assert _train(straight, "--config.train.steps=6") == 0
    assert (
        main(
            [
                "train",
                "--config",
                TINY,
                "--workdir",
                str(interrupted),
                "--stop-after",
                "3",
                "--config.log.progress=false",
                "--config.train.steps=6",
                "--config.eval.every=2",
                "--config.log.every=2",
            ]
        )
        == 0
    )
    assert layout.manager(interrupted).latest_step() == 3
    assert _train(interrupted, "--config.train.steps=6") == 0
    _, expected = params_checkpoint.load_params(straight)
    _, resumed = params_checkpoint.load_params(interrupted)
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert params_checkpoint.read_data_state(interrupted) == params_checkpoint.read_data_state(
        straight
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config.train.stepz=3"], "unknown config key 'train.stepz'"),
        (["--config.model.d_model=abc"], "--config.model.d_model: cannot parse 'abc' as int"),
        (["--config.data.source=/no/such/data.txt"], "/no/such/data.txt does not exist"),
        (["--config.model.vocab_size=100"], "vocab_size=100 is too small"),
        (["--config.train.batch_size=6", "--config.train.grad_accum=4"], "not divisible"),
        (["--bogus"], "overrides look like --config.train.steps=100"),
    ],
)
def test_bad_input_one_line_error(tmp_path, capsys, args, message):
    assert _train(tmp_path, *args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_tokenizer_vocab_mismatch(tmp_path, capsys):
    from lladax.data.tokenizer import load_tokenizer

    bigger = load_tokenizer("embedded", vocab_size=2048)  # the tiny model has 512 ids
    assert _train(tmp_path, f"--config.data.tokenizer={bigger.name}") == 2
    assert "vocab mismatch: the tokenizer" in capsys.readouterr().err


def test_missing_config_file(capsys):
    assert main(["train", "--config", "configs/nope.py"]) == 2
    assert "config file configs/nope.py does not exist" in capsys.readouterr().err


def test_console_script_exit_code(tmp_path):
    (tmp_path / "src").mkdir()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lladax.cli",
            "convert",
            str(tmp_path / "src"),
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().endswith("pass a Hugging Face LLaDA checkpoint directory")


# --- sample / infill / chat -------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tiny_run")
    assert _train(workdir, "--config.train.steps=2", "--config.eval.every=0") == 0
    return str(workdir)


def test_sample_batch_of_prompts_and_show_steps(tiny_run, capsys):
    args = [
        "sample",
        "--checkpoint",
        tiny_run,
        "--prompt",
        "The list",
        "--prompt",
        "A much longer prompt about dictionaries",
        "--gen-length",
        "8",
        "--steps",
        "4",
        "--block-length",
        "4",
        "--show-steps",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line[:5] for line in out[:4]] == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"]
    assert "█" in out[0] and "### The list" in out


def test_infill_fills_exactly_the_marked_spans(tiny_run, capsys):
    from lladax.cli.sample_cmd import encode_infill
    from lladax.store.loading import load_model

    text = "Lists hold <mask:3> items and <mask> values."
    assert (
        main(
            [
                "sample",
                "--checkpoint",
                tiny_run,
                "--infill",
                text,
                "--mask-span",
                "2",
                "--steps",
                "5",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out.strip()
    assert "█" not in out and out.startswith("Lists hold ") and out.endswith(" values.")
    assert " items and " in out
    # The same call at the API level: exactly the 5 marked positions change.
    from lladax.diffusion import sampling

    cfg, params, tok = load_model(tiny_run)
    ids = encode_infill(text, tok, cfg.mask_token_id, 2)
    filled = np.asarray(sampling.infill(params, cfg, [ids], steps=5))[0]
    is_mask = np.asarray(ids) == cfg.mask_token_id
    assert is_mask.sum() == 5
    np.testing.assert_array_equal(filled[~is_mask], np.asarray(ids)[~is_mask])
    assert (filled[is_mask] != cfg.mask_token_id).all()


def test_infill_without_marker_is_an_error(tiny_run, capsys):
    assert main(["sample", "--checkpoint", tiny_run, "--infill", "no spans here"]) == 2
    assert "has no <mask> marker" in capsys.readouterr().err


def test_sample_bad_options_one_line(tiny_run, capsys):
    assert (
        main(
            [
                "sample",
                "--checkpoint",
                tiny_run,
                "--prompt",
                "x",
                "--gen-length",
                "8",
                "--block-length",
                "3",
            ]
        )
        == 2
    )
    assert "--block-length 3 does not divide --gen-length 8" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", "/no/such/run", "--prompt", "x"]) == 2
    assert "/no/such/run does not exist" in capsys.readouterr().err


def test_chat_keeps_history_like_the_reference(tiny_run, capsys, monkeypatch):
    from lladax.diffusion import sampling

    prompts, canvases = [], []
    real_generate = sampling.generate_with  # what the CLI calls, with a SamplerConfig

    def recording_generate(params, cfg, prompt, *args, **kwargs):
        out = real_generate(params, cfg, prompt, *args, **kwargs)
        prompts.append(np.asarray(prompt)[0].tolist())
        canvases.append(np.asarray(out)[0].tolist())
        return out

    monkeypatch.setattr(sampling, "generate_with", recording_generate)
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\nand more\n/reset\nagain\n/quit\n"))
    assert main(["chat", "--checkpoint", tiny_run, "--gen-length", "8", "--steps", "8"]) == 0
    out = capsys.readouterr().out
    assert out.count("assistant> ") == 3 and "(history cleared)" in out
    cfg_eos = 2
    first_without_eos = [t for t in canvases[0] if t != cfg_eos]
    assert prompts[1][: len(first_without_eos)] == first_without_eos  # turn 2 extends turn 1
    assert prompts[1][len(first_without_eos)] != 1  # ... without a 2nd BOS
    assert prompts[2][0] == 1 and len(prompts[2]) < len(prompts[1])  # /reset starts over


# --- refused inputs (issue 21): one line, exit 2, before the model loads, nothing changed -------
@pytest.fixture
def fake_run(tmp_path):
    """A directory shaped like a `lladax train` run (no weights): every refusal below happens
    before a weight would be read, so loading it would fail with a different message."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "tokenizer.model").write_bytes(b"not read")
    (tmp_path / "blank.txt").write_text("\n   \n")
    (tmp_path / "binary.txt").write_bytes(b"a prompt\n\xff\xfe\x00")
    return run


SAMPLE_REFUSALS = [
    (["--steps", "0"], "--steps 0 must be >= 1"),
    (["--gen-length", "0"], "--gen-length 0 must be >= 1"),
    (["--block-length", "0"], "--block-length 0 must be >= 1"),
    (
        ["--gen-length", "8", "--block-length", "3"],
        "--block-length 3 does not divide --gen-length 8: pass a divisor of 8",
    ),
    (
        ["--gen-length", "8", "--block-length", "4", "--steps", "3"],
        "--steps 3 is not a multiple of the number of blocks 2",
    ),
    (["--temperature", "-1"], "--temperature -1.0 must be a finite number >= 0"),
    (["--temperature", "nan"], "--temperature nan must be a finite number >= 0"),
    (["--cfg-scale", "-0.5"], "--cfg-scale -0.5 must be a finite number >= 0"),
    (["--seed", "-1"], "--seed -1 must be an integer in [0, 2**63)"),
    (["--threshold", "-0.1"], "--threshold -0.1 must be a finite number >= 0"),
    (["--factor", "0"], "--factor 0.0 must be a finite number > 0"),
    (["--threshold", "0.9", "--factor", "1"], "pass one of them"),
    (["--fast", "--show-steps"], "drop --fast/--cache/--threshold/--factor"),
    (["--prompt-file", "{tmp}/blank.txt"], "holds no prompt (it is empty or blank)"),
    (["--prompt-file", "{tmp}/binary.txt"], "byte 9 is not valid UTF-8, so this is not UTF-8 text"),
    (["--prompt-file", "{tmp}"], "is not a file"),
    (["--prompt-file", "{tmp}/absent.txt"], "absent.txt does not exist"),
    (["--infill", "a <mask:0> b"], "marker <mask:0> must mark at least one token"),
    (["--infill", "no spans"], "has no <mask> marker"),
    (["--infill", "a <mask> b", "--mask-span", "0"], "--mask-span 0 must be >= 1"),
    (
        ["--infill", "a <mask> b", "--chat", "--cfg-scale", "1"],
        "--chat, --cfg-scale: no effect with --infill",
    ),
    (["--tokenizer", "{tmp}/absent.json"], "--tokenizer {tmp}/absent.json does not exist"),
    (["--tokenizer", "{tmp}/blank.txt"], "neither a .json (Hugging Face) nor a .model"),
]


@pytest.mark.parametrize("extra, words", SAMPLE_REFUSALS)
def test_sample_refuses_bad_flags_before_loading(fake_run, cli_error, extra, words):
    tmp = str(fake_run.parent)
    extra = [a.replace("{tmp}", tmp) for a in extra]
    if not any(a in extra for a in ("--prompt-file", "--infill")):
        extra = ["--prompt", "x", *extra]
    line = cli_error(["sample", "--checkpoint", fake_run, *extra], untouched=[fake_run.parent])
    assert words.replace("{tmp}", tmp) in line


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--steps", "0"], "--steps 0 must be >= 1"),
        (["--gen-length", "12", "--block-length", "5"], "--block-length 5 does not divide"),
        (["--temperature", "inf"], "--temperature inf must be a finite number >= 0"),
    ],
)
def test_chat_refuses_bad_flags_before_loading(fake_run, cli_error, extra, words):
    assert words in cli_error(
        ["chat", "--checkpoint", fake_run, *extra], untouched=[fake_run.parent]
    )


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda d: (d.mkdir(), (d / "metrics.jsonl").write_text("{}")), "is a file, not a dir"),
        (lambda d: d.mkdir(), "holds neither config.json"),
        (
            lambda d: (
                (d / "checkpoints").mkdir(parents=True),
                (d / "config.json").write_text("{}"),
            ),
            "holds both config.json (a Hugging Face model) and checkpoints/",
        ),
        (
            lambda d: (d / "checkpoints").mkdir(parents=True),
            "has no tokenizer (tokenizer.json or tokenizer.model): pass --tokenizer",
        ),
    ],
    ids=["file", "empty", "hf-and-run", "no-tokenizer"],
)
def test_sample_refuses_bad_checkpoint_dirs(tmp_path, cli_error, make, words):
    target = tmp_path / "ckpt"
    make(target)
    if (target / "metrics.jsonl").exists():
        target = target / "metrics.jsonl"
    line = cli_error(["sample", "--checkpoint", target, "--prompt", "x"], untouched=[tmp_path])
    assert words in line


CONFIG_FILES = [
    ("syntax.py", "def get_config(:\n    pass\n", "syntax.py:1: syntax error: "),
    ("raises.py", "import math\nx = 1\ny = x / 0\n", "raises.py:3: ZeroDivisionError: division by"),
    (
        "inner.py",
        "def helper(n):\n    return {}[n]\n\ndef get_config():\n    return helper(7)\n",
        "inner.py:2: KeyError: 7",
    ),
    ("noconf.py", "x = 1\n", "defines no get_config()"),
    (
        "notdict.py",
        "def get_config():\n    return {'a': 1}\n",
        "get_config() returned dict, not an ml_collections.ConfigDict",
    ),
    (
        "needsarg.py",
        "def get_config(size):\n    return size\n",
        "needsarg.py: TypeError: get_config() missing 1 required positional argument",
    ),
]


@pytest.mark.parametrize("name, source, words", CONFIG_FILES, ids=[c[0] for c in CONFIG_FILES])
@pytest.mark.parametrize("command", ["train", "plan"])
def test_broken_config_file_is_one_line_with_file_and_line(
    tmp_path, cli_error, name, source, words, command
):
    path = tmp_path / name
    path.write_text(source)
    argv = [command, "--config", path] + (
        ["--workdir", tmp_path / "w"] if command == "train" else ["--hardware", "v5p-8"]
    )
    line = cli_error(argv, untouched=[tmp_path])
    assert words in line and str(tmp_path) in line
