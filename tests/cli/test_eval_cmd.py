"""`lladax eval` refuses every bad flag and model arg in one line before the model loads (issue 21;
the adapter and the end-to-end run are tests/eval/test_harness.py)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("lm_eval")


# --- issue 21: every eval flag and model arg is refused before the model loads -----------------
@pytest.fixture
def eval_places(tmp_path):
    run = tmp_path / "run"  # shaped like a run; refusals come before any weight is read
    (run / "checkpoints").mkdir(parents=True)
    (run / "tokenizer.model").write_bytes(b"not read")
    (tmp_path / "notes.json").write_text('{"mine": true}')
    (tmp_path / "old.json").write_text(json.dumps({"results": {}, "lladax_eval": {}}))
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "tasks").mkdir()
    return tmp_path


EVAL_REFUSALS = [
    (["--output", "{d}"], "is a directory: pass a file path"),
    (["--output", "{d}/notes.json"], "exists and is not a `lladax eval` result"),
    (["--output", "{d}/notes.json", "--overwrite"], "refusing to overwrite it"),
    (
        ["--output", "{d}/old.json"],
        "already holds a `lladax eval` result: pass a new path, or --overwrite",
    ),
    (["--output", "{d}/file.txt/r.json"], "is a file, not a directory"),
    (["--limit", "0"], "--limit 0 must be a whole number of examples >= 1 or a fraction"),
    (["--limit", "2.5"], "--limit 2.5 must be a whole number"),
    (["--num-fewshot", "-1"], "--num-fewshot -1 must be >= 0"),
    (["--include-path", "{d}/absent"], "is not a directory"),
    (["--only-include-path"], "--only-include-path needs --include-path DIR"),
    (["--tokenizer", "{d}/absent.json"], "--tokenizer {d}/absent.json does not exist"),
    (["--model-args", "mc_num"], "model arg 'mc_num' is not key=value"),
    (["--model-args", "mc_num=0"], "model arg mc_num=0 must be >= 1"),
    (["--model-args", "mc_num=4.5"], "model arg mc_num='4.5' must be int"),
    (["--model-args", "steps=0"], "model arg steps=0 must be >= 1"),
    (["--model-args", "pair_batch=0"], "model arg pair_batch=0 must be >= 1"),
    (["--model-args", "seed=-1"], "model arg seed=-1 must be >= 0"),
    (["--model-args", "gen_length=8,block_length=4,steps=3"], "steps=3 is not a multiple of"),
    (["--model-args", "cfg_scale=nan"], "model arg cfg_scale='nan' must be a finite number"),
    (["--model-args", "temperature=-1"], "temperature=-1.0 must be >= 0"),
    (["--model-args", "remasking=best"], "unknown remasking 'best'"),
    (["--model-args", "add_bos=maybe"], "add_bos='maybe' must be true or false"),
    (["--model-args", "dtype=float16"], "model arg dtype='float16': use one of float32"),
    (["--model-args", "bogus=1"], "unknown model arg 'bogus'"),
    (
        ["--tasks", "nope", "--include-path", "{d}/tasks", "--only-include-path"],
        "unknown lm-eval task(s) ['nope']",
    ),
    (["--tasks", "a,,b"], "has an empty task name"),
]


@pytest.mark.parametrize("extra, words", EVAL_REFUSALS)
def test_eval_refusals_before_loading(eval_places, cli_error, extra, words):
    d = str(eval_places)
    argv = [
        "eval",
        "--checkpoint",
        eval_places / "run",
        "--tasks",
        "x",
        "--output",
        eval_places / "r.json",
    ]
    line = cli_error(argv + [a.replace("{d}", d) for a in extra], untouched=[eval_places])
    assert words.replace("{d}", d) in line
    assert not (eval_places / "r.json").exists()
