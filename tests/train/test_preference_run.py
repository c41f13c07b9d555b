"""A preference (DPO / VRPO) run end to end through `lladax train`: it starts from an SFT run,
keeps that run's params as the frozen reference, resumes bit-exactly, and refuses what cannot
work with one line."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from lladax.cli import main
from lladax.store import checkpoint, layout, params_checkpoint
from lladax.train import trainer
from lladax.train.run_config import PreferenceConfig, TrainConfig, model_config_from

ROOT = Path(__file__).resolve().parents[2]
STEPS, STOP_AT = 4, 2


def _sft_args(workdir):
    return [
        "train",
        "--config",
        str(ROOT / "configs" / "sft_tiny.py"),
        "--workdir",
        str(workdir),
        "--config.log.progress=false",
        "--config.train.steps=2",
        "--config.eval.every=0",
        "--config.data.source=synthetic:copy,reverse",
        "--config.data.seq_len=48",
    ]


def _pref_args(workdir, init_from, *extra):
    return [
        "train",
        "--config",
        str(ROOT / "configs" / "sft_tiny.py"),
        "--workdir",
        str(workdir),
        "--config.log.progress=false",
        "--config.data.format=preference",
        "--config.data.source=synthetic:copy,reverse",
        "--config.data.seq_len=48",
        f"--config.train.steps={STEPS}",
        "--config.train.batch_size=16",
        "--config.train.grad_accum=2",
        "--config.train.lr=1e-3",
        "--config.preference.n_t=2",
        "--config.preference.reference_dtype=bfloat16",
        "--config.eval.every=2",
        "--config.eval.batches=1",
        "--config.eval.batch_size=8",
        "--config.log.every=1",
        f"--config.checkpoint.init_from={init_from}",
        *extra,
    ]


def _state(run_dir):
    _, meta = params_checkpoint.read_meta(run_dir)
    cfg = model_config_from(meta["run"]["model"])
    tc = TrainConfig.from_config(meta["run"]["train"])
    pref = PreferenceConfig.from_config(meta["run"]["preference"])
    like = trainer.abstract_state(cfg, tc, trainer.make_optimizer(tc), pref=pref)
    return checkpoint.restore(layout.manager(run_dir, read_only=True), like, quarantine=False).state


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An SFT run; a preference run from it straight to STEPS, and one stopped at STOP_AT and
    resumed."""
    root = tmp_path_factory.mktemp("pref")
    sft, straight, resumed = root / "sft", root / "straight", root / "resumed"
    assert main(_sft_args(sft)) == 0
    assert main(_pref_args(straight, sft)) == 0
    assert main([*_pref_args(resumed, sft), f"--stop-after={STOP_AT}"]) == 0
    assert main(_pref_args(resumed, sft)) == 0
    return sft, straight, resumed


def test_reference_is_the_start_and_never_changes(runs):
    sft, straight, _ = runs
    _, start = params_checkpoint.load_params(sft)
    state = _state(straight)
    moved = False
    for ref, p0, p in zip(
        jax.tree.leaves(state.reference),
        jax.tree.leaves(start),
        jax.tree.leaves(state.params),
        strict=True,
    ):
        assert ref.dtype == np.dtype("bfloat16")  # preference.reference_dtype
        np.testing.assert_array_equal(np.asarray(ref), np.asarray(p0).astype(ref.dtype))
        moved |= not np.array_equal(np.asarray(p), np.asarray(p0))
    assert moved  # the policy trained
    # what `lladax sample / chat / serve` load from the run: the policy, not the reference
    _, params = params_checkpoint.load_params(straight)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(state.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_metrics_and_held_out_numbers_are_logged(runs):
    _, straight, _ = runs
    records = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    first = records[0]  # step 0: the policy IS the reference, so the held-out loss is log 2
    assert first["step"] == 0 and first["eval_loss"] == pytest.approx(np.log(2), abs=2e-3)
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, STEPS + 1))
    assert steps[0]["loss"] == pytest.approx(np.log(2), abs=2e-3)  # bf16 reference: not exactly
    for r in steps:
        assert 0.0 <= r["reward_accuracy"] <= 1.0 and np.isfinite(r["score"])
        assert np.isfinite(r["chosen_reward"]) and np.isfinite(r["rejected_reward"])
    assert "eval_reward_accuracy" in records[-1]


def test_resume_is_bit_exact(runs):
    _, straight, resumed = runs
    a, b = _state(straight), _state(resumed)
    assert int(a.step) == int(b.step) == STEPS
    a, b = (s.replace(rng=jax.random.key_data(s.rng)) for s in (a, b))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_preference_run_needs_a_start(tmp_path, cli_error):
    args = _pref_args(tmp_path / "run", "")
    line = cli_error(args)
    assert "data.format='preference'" in line and "checkpoint.init_from" in line
    assert not (tmp_path / "run").exists()


def test_resume_with_another_objective_is_refused(runs, cli_error):
    sft, straight, _ = runs
    line = cli_error([*_sft_args(straight), "--config.train.steps=9"], untouched=[straight])
    assert "holds a preference run" in line and "new --workdir" in line
    line = cli_error(_pref_args(sft, sft), untouched=[sft])
    assert "holds a pretraining / SFT run" in line and "new --workdir" in line
