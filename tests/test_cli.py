"""The `lladax` console script: train end to end, resume, and one-line errors on bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lladax import checkpoint
from lladax.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.py")


def _train(workdir, *extra):
    return main(["train", "--config", TINY, "--workdir", str(workdir),
                 "--config.log.progress=false", "--config.train.steps=4",
                 "--config.eval.every=2", "--config.log.every=2", *extra])


def test_train_saves_checkpoint_and_resumes(tmp_path, capsys):
    assert _train(tmp_path) == 0
    out = capsys.readouterr().out
    assert json.loads(out.splitlines()[0])["step"] == 4
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[0] == {"step": 0, "eval_loss": records[0]["eval_loss"]}
    assert {"loss", "tokens_per_s", "mfu", "eval_loss"} <= set(records[-1])
    assert (tmp_path / "tokenizer.model").exists()
    cfg, params = checkpoint.load_params(tmp_path)
    assert cfg.n_layers == 2 and params["wte"].shape == (cfg.vocab_size, cfg.d_model)
    # Resume: continues from step 4 to 6 instead of starting over.
    assert _train(tmp_path, "--config.train.steps=6") == 0
    assert checkpoint.manager(tmp_path).latest_step() == 6
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text()
             .splitlines()]
    assert steps.count(0) == 1 and steps[-1] == 6


@pytest.mark.parametrize("args, message", [
    (["--config.train.stepz=3"], "unknown config key 'train.stepz'"),
    (["--config.model.d_model=abc"], "--config.model.d_model: cannot parse 'abc' as int"),
    (["--config.data.source=/no/such/data.txt"], "/no/such/data.txt does not exist"),
    (["--config.model.vocab_size=100"], "vocab_size=100 is too small"),
    (["--config.train.batch_size=6", "--config.train.grad_accum=4"], "not divisible"),
    (["--bogus"], "overrides look like --config.train.steps=100"),
])
def test_bad_input_one_line_error(tmp_path, capsys, args, message):
    assert _train(tmp_path, *args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_tokenizer_vocab_mismatch(tmp_path, capsys):
    from lladax.tokenizer import default_tokenizer

    bigger = default_tokenizer(2048)  # the tiny model has 512 ids
    assert _train(tmp_path, f"--config.data.tokenizer={bigger.name}") == 2
    assert "vocab mismatch: the tokenizer" in capsys.readouterr().err


def test_missing_config_file(capsys):
    assert main(["train", "--config", "configs/nope.py"]) == 2
    assert "config file configs/nope.py does not exist" in capsys.readouterr().err


def test_console_script_exit_code(tmp_path):
    result = subprocess.run([sys.executable, "-m", "lladax.cli", "convert", str(tmp_path),
                             str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().endswith("pass a Hugging Face LLaDA checkpoint directory")
