"""`lladax experiment blocks`: the arms are the runs the docs describe (equal tokens; AR -> block
diffusion vs scratch at equal steps), FLOPs follow the curriculum, seeds aggregate to mean ± CI
with the paired adaptation gain, the command runs end to end in a tiny setting, and every bad
option is refused in milliseconds with nothing written."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tree_snapshot

from lladax.cli import main
from lladax.eval.experiments import EXPERIMENTS, blocks, scaling

TINY = ["--steps", "2", "--pairs", "4", "--mc", "4", "--eval-batches", "1", "--noise-draws", "1"]


def _args(tmp_path, *argv: str):
    return blocks.parse_args([*argv, "--no-plot", "--out", str(tmp_path / "out")])


def test_arms_equal_tokens_then_ar_to_bd_vs_scratch_at_equal_steps(tmp_path):
    args = _args(tmp_path, "--steps", "100", "--adapt-steps", "50", "--adapt-block", "8")
    plan = blocks.arms(args)
    assert [(a.name, a.kind, a.block_size, a.steps) for a in plan] == [
        ("autoregressive", "autoregressive", None, 100),
        ("diffusion", "diffusion", None, 100),
        ("bd4", "block_diffusion", 4, 100),
        ("bd16", "block_diffusion", 16, 100),
        ("bd64", "block_diffusion", 64, 100),
        ("ar_to_bd8", "block_diffusion", 8, 50),
        ("bd8_scratch", "block_diffusion", 8, 150),
    ]
    assert args.curriculum == blocks.default_curriculum(50, 64, 8) == "1:5,4:5,64:15,8"
    adapted = blocks.arm_config(plan[-2], 3, args, tmp_path)
    assert adapted.checkpoint.init_from == str(tmp_path / "seed3" / "autoregressive")
    assert adapted.train.block_curriculum == "1:5,4:5,64:15,8"
    assert (adapted.train.steps, adapted.train.seed, adapted.data.seed) == (50, 3, 3)
    scratch = blocks.arm_config(plan[-1], 3, args, tmp_path)
    assert (scratch.checkpoint.init_from, scratch.train.block_curriculum) == ("", "")
    assert scratch.model.d_model == scaling.SIZES["xs"][0] and scratch.model.block_size == 8
    # --adapt-steps 0 skips the adaptation; no block sizes leaves AR and diffusion.
    assert [a.name for a in blocks.arms(_args(tmp_path, "--blocks", "--adapt-steps", "0"))] == [
        "autoregressive",
        "diffusion",
    ]


def test_train_flops_count_one_block_stages_as_llada_and_block_stages_twice(tmp_path):
    args = _args(tmp_path, "--steps", "10", "--adapt-steps", "10", "--curriculum", "64:4,16")
    plan = {a.name: a for a in blocks.arms(args)}
    flops = {
        name: blocks.train_flops(blocks.arm_config(plan[name], 0, args, tmp_path))
        for name in ("diffusion", "bd16", "bd64", "ar_to_bd16")
    }
    assert flops["bd64"] == flops["diffusion"]  # one block per row: LLaDA's forward
    assert flops["bd16"] > 1.9 * flops["diffusion"]  # the noisy and the clean copy
    assert flops["ar_to_bd16"] == pytest.approx(0.4 * flops["diffusion"] + 0.6 * flops["bd16"])


def _fake_seed(seed, args, log=print, **_):
    """Per-seed runs with known numbers: arm i scores i + seed (held-out) and ranking (i + seed)
    / 10; no training."""
    runs = []
    for i, arm in enumerate(blocks.arms(args)):
        runs.append(
            {
                "arm": arm.name,
                "part": arm.part,
                "kind": arm.kind,
                "block_size": arm.block_size,
                "steps": arm.steps,
                "curriculum": arm.curriculum,
                "params": 1000,
                "tokens": 64 * arm.steps,
                "train_flops": 1.0,
                "total_tokens": 64 * arm.steps,
                "total_flops": 1.0,
                "train_loss": 9.0,
                "heldout_loss": float(i + seed),
                "ranking": (i + seed) / 10,
            }
        )
    return {"seed": seed, "runs": runs}


def test_seeds_aggregate_to_mean_ci_and_the_paired_adaptation_gain(tmp_path, monkeypatch):
    monkeypatch.setattr(blocks, "run_seed", _fake_seed)
    monkeypatch.setattr(scaling, "heldout_stream", lambda config: np.zeros(10_000, np.int32))
    out = tmp_path / "out"
    argv = ["experiment", "blocks", "--seeds", "0", "1", "2", "--blocks", "4", "--out", str(out)]
    assert main([*argv, "--no-plot"]) == 0
    result = json.loads((out / "blocks.json").read_text())
    rows = {r["arm"]: r for r in result["summary"]["arms"]}
    assert list(rows) == ["autoregressive", "diffusion", "bd4", "ar_to_bd16", "bd16_scratch"]
    assert rows["bd4"]["heldout_loss"]["mean"] == pytest.approx(3.0)  # arm 2, seeds 0..2
    assert rows["bd4"]["seeds"] == [0, 1, 2] and rows["bd16_scratch"]["steps"] == 450
    gain = result["summary"]["adaptation"]
    assert (gain["adapted"], gain["scratch"]) == ("ar_to_bd16", "bd16_scratch")
    # scratch (arm 4) - adapted (arm 3) = 1 in every seed: a zero-width interval.
    assert gain["heldout_gain"] == {"mean": 1.0, "ci95": 0.0, "n": 3}
    assert gain["ranking_gain"]["mean"] == pytest.approx(-0.1)
    assert sorted(p.name for p in out.iterdir()) == ["blocks.json"]


@pytest.mark.slow  # ~100 s of CI (5 tiny training runs); its parts are tested above
def test_blocks_command_runs_tiny(tmp_path):
    # No --blocks arm (a block diffusion run from scratch is the last arm): 4 runs, not 5.
    argv = [*TINY, "--blocks", "--adapt-steps", "2", "--adapt-block", "4"]
    argv += ["--curriculum", "1:1,4", "--out", str(tmp_path)]
    assert main(["experiment", "blocks", *argv]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocks.json", "blocks.png"]
    result = json.loads((tmp_path / "blocks.json").read_text())
    runs = {r["arm"]: r for r in result["per_seed"][0]["runs"]}
    assert list(runs) == ["autoregressive", "diffusion", "ar_to_bd4", "bd4_scratch"]
    assert all(0 <= r["ranking"] <= 1 and r["heldout_loss"] > 0 for r in runs.values())
    adapted, scratch = runs["ar_to_bd4"], runs["bd4_scratch"]
    assert (adapted["steps"], scratch["steps"], adapted["curriculum"]) == (2, 4, "1:1,4")
    assert adapted["total_tokens"] == scratch["total_tokens"] == 2 * adapted["tokens"]
    assert adapted["total_flops"] < scratch["total_flops"]  # its first half was AR steps
    assert result["summary"]["adaptation"]["heldout_gain"]["ci95"] is None  # one seed


BAD = [
    (["--blocks", "4", "4"], "--blocks repeats 4"),
    (["--blocks", "0"], "--blocks 0 must be a positive block size"),
    (["--size", "xl"], "invalid choice: 'xl'"),
    (["--adapt-steps", "-1"], "--adapt-steps -1 is too small"),
    (["--adapt-steps", "3"], "too few for the default curriculum"),
    (["--curriculum", "4:10,8"], "ends at block size 8 but model.block_size=16"),
    (["--curriculum", "4:x,16"], "not SIZE:STEPS"),
    (["--curriculum", "4:150,16"], "reaches its last stage (block 16) at step 150"),
    (["--mc", "20"], "multiple of 16"),
    (["--pairs", "0"], "--pairs 0 is too small"),
    (["--seeds", "1", "1"], "--seeds repeats 1"),
    (["--out", "{file}"], "is a file, not a directory"),
]


@pytest.mark.parametrize(("argv", "words"), BAD)
def test_bad_options_are_refused_before_any_work(cli_error, tmp_path, argv, words):
    (tmp_path / "file").write_text("mine\n")
    argv = [a.format(file=tmp_path / "file") for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    line = cli_error(["experiment", "blocks", *argv], code=2, untouched=[tmp_path])
    assert words in line
    assert not (tmp_path / "out").exists()


def test_missing_matplotlib_is_refused_before_any_work(cli_error, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    argv = ["experiment", "blocks", "--out", str(tmp_path / "out")]
    line = cli_error(argv, code=2, untouched=[tmp_path])
    assert "matplotlib is not installed" in line and "--no-plot" in line
    assert not (tmp_path / "out").exists()


def test_a_stopped_training_run_stops_the_experiment(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(scaling, "heldout_stream", lambda config: np.zeros(10_000, np.int32))
    monkeypatch.setattr(scaling.loop, "run", lambda config: {"loss": 9.0, "stopped": "SIGINT"})
    before = tree_snapshot(tmp_path)
    assert main(["experiment", "blocks", "--out", str(tmp_path / "out")]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "lladax experiment: stopped by SIGINT during the autoregressive run of seed 0: nothing "
        "was written; rerun the command to start again"
    )
    assert tree_snapshot(tmp_path) == before


def test_the_cli_lists_it():
    assert "blocks" in EXPERIMENTS
    doc = (Path(blocks.__file__).parents[2] / "cli" / "experiment_cmd.py").read_text()
    assert "lladax experiment blocks" in doc
