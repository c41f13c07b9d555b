"""The package's offline lm-eval tasks (`lladax/eval/tasks`) through lm-eval's own CLI, and the
adapter's generation options (early exit, fast decoding, block diffusion) on tiny random models.

Models: the `tiny` preset, random init, exported as HF directories with the run's default
sentencepiece tokenizer (no training: these tests check plumbing, not quality).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import jax
import pytest

pytest.importorskip("lm_eval")

from lladax import config
from lladax.eval.tasks import TASK_DIR, synth
from lladax.model.transformer import init_params
from lladax.store import convert

GEN = "gen_length=8,steps=8,block_length=8"  # short replies: one small program per bucket


def _export(directory, tok, **overrides):
    cfg = config.preset("tiny", **overrides)
    convert.save_hf(directory, cfg, init_params(cfg, jax.random.key(0)))
    shutil.copy(tok.name, directory / "tokenizer.model")
    return directory


@pytest.fixture(scope="module")
def llada_dir(tok, tmp_path_factory):
    return _export(tmp_path_factory.mktemp("llada"), tok)


@pytest.fixture(scope="module")
def block_dir(tok, tmp_path_factory):
    return _export(tmp_path_factory.mktemp("bd"), tok, kind="block_diffusion", block_size=4)


def test_task_data_is_the_seeded_synthetic_set(tmp_path):
    """The committed jsonl is exactly what the writer produces from the fixed seed."""
    for path in synth.write_tasks(tmp_path):
        assert path.read_bytes() == (TASK_DIR / path.name).read_bytes(), path.name
    gen = [json.loads(line) for line in (TASK_DIR / synth.GEN_FILE).read_text().splitlines()]
    mc = [json.loads(line) for line in (TASK_DIR / synth.MC_FILE).read_text().splitlines()]
    assert [r["task"] for r in gen[:5]] == ["copy", "reverse", "sort", "add", "lookup"]
    for g, m in zip(gen, mc, strict=True):
        assert m["prompt"] == g["prompt"] and m["choices"][m["label"]] == g["answer"]
        assert len(set(m["choices"])) == synth.CHOICES


@pytest.mark.slow  # ~50 s (a subprocess starts lm-eval); task data and adapter are tested in CI
def test_lm_eval_cli_runs_the_local_tasks_offline(llada_dir, tmp_path):
    """`python -m lladax.eval.harness` is lm-eval's CLI with `--model lladax` registered."""
    env = os.environ | {
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(tmp_path / "hf_datasets"),
        "JAX_PLATFORMS": "cpu",
    }
    args = f"checkpoint={llada_dir},chat=true,mc_num=2,batch_size=2,{GEN}"
    cmd = [sys.executable, "-m", "lladax.eval.harness", "--model", "lladax"]
    cmd += ["--model_args", args, "--tasks", "lladax_synth_gen,lladax_synth_mc"]
    cmd += ["--include_path", str(TASK_DIR), "--limit", "4", "--batch_size", "2"]
    cmd += ["--output_path", str(tmp_path / "out")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = (tmp_path / "out").rglob("results_*.json")
    results = json.loads(path.read_text())["results"]
    assert 0.0 <= results["lladax_synth_gen"]["exact_match,strip"] <= 1.0
    assert 0.0 <= results["lladax_synth_mc"]["acc,none"] <= 1.0


class Req:  # a request: the only field the adapter reads
    def __init__(self, *args):
        self.args = args


PROMPTS = ["Copy: file list value", "Add: 2 + 3", "Find A: A = key B = code"]


def _texts(lm) -> list[str]:
    return lm.generate_until([Req(p, {"until": ["\n"]}) for p in PROMPTS])


def _adapter(directory, **args):
    from lladax.eval.harness import LLaDAEval

    base = {"checkpoint": str(directory), "chat": True, "mc_num": 2, "batch_size": 2}
    base |= {"gen_length": 8, "steps": 8}
    # lm-eval's CLI passes typed model args and its own --batch_size: the model arg wins
    return LLaDAEval.create_from_arg_obj(base | args, {"batch_size": "1", "device": None})


def test_early_exit_is_the_default_and_changes_no_answer(llada_dir):
    lm, plain = _adapter(llada_dir), _adapter(llada_dir, early_exit=False)
    assert lm.sampler.early_exit and not plain.sampler.early_exit
    assert lm.opts["batch_size"] == 2 and lm.model_args["early_exit"] is True
    assert _texts(lm) == _texts(plain)
    assert lm.forward_passes <= plain.forward_passes == 2 * 8  # two batches, 8 steps each


def test_fast_decoding_through_model_args(llada_dir, capsys):
    from lladax.cli import main

    lm = _adapter(llada_dir, cache="dual", threshold=0.9, block_length=4)
    assert lm.sampler.fast and all(isinstance(t, str) for t in _texts(lm))
    assert 0 < lm.forward_passes <= 2 * 8
    with pytest.raises(ValueError, match="also set cache") as e:  # refused before any compile
        _adapter(llada_dir, threshold=0.9)
    assert "\n" not in str(e.value)
    # the same options through `lladax eval` (key=value strings) are checked before loading
    out = str(llada_dir / "r.json")
    argv = ["eval", "--checkpoint", str(llada_dir), "--tasks", "x", "--output", out]
    assert main([*argv, "--model-args", "cache=fast"]) == 2
    assert "unknown cache mode 'fast'" in capsys.readouterr().err


def test_block_diffusion_checkpoint_serves_both_request_types(block_dir):
    lm, plain = _adapter(block_dir), _adapter(block_dir, early_exit=False)
    assert lm.cfg.kind == "block_diffusion" and lm.sampler.early_exit
    assert _texts(lm) == _texts(plain)
    scores = lm.loglikelihood([Req("Copy: file", " file"), Req("Copy: file", " list")])
    assert all(isinstance(s, float) and g is False for s, g in scores)
