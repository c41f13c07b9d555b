"""The training loop end to end (through `lladax train`): bit-exact resume after a SIGTERM, the
NaN guard and EMA across a resume, and one-line errors for bad run directories."""

import json
import os
import re
import signal
from pathlib import Path

import jax
import numpy as np
import pytest

from lladax import checkpoint, loop, train
from lladax.cli import main
from lladax.config import model_config_from

ROOT = Path(__file__).resolve().parents[1]
STEPS, STOP_AT, POISON_AT = 12, 5, 8  # the 8th batch carries an id outside the vocabulary


def _args(workdir, *extra):
    return ["train", "--config", str(ROOT / "configs" / "tiny.py"), "--workdir", str(workdir),
            "--config.log.progress=false", f"--config.train.steps={STEPS}",
            "--config.train.ema_decay=0.9", "--config.eval.every=0", "--config.log.every=4",
            "--config.data.seq_len=32", *extra]


class Recorder:
    """Wraps the loop's batch iterator: records every batch it hands out, poisons batch
    POISON_AT (counted over the whole run, resumes included) and can send this process a
    SIGTERM when handing out batch `sigterm_at` (as a preemption notice would arrive)."""

    def __init__(self, it, seen: list, first: int, sigterm_at: int | None = None):
        self.it, self.seen, self.n, self.sigterm_at = it, seen, first, sigterm_at

    def __next__(self):
        batch = dict(next(self.it))
        self.n += 1
        if self.n == POISON_AT:
            batch["tokens"] = batch["tokens"].copy()
            batch["tokens"][0, 3] = 512  # tiny vocab = 512: gathers a NaN embedding
        self.seen.append(batch["tokens"].copy())
        if self.n == self.sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return batch

    def get_state(self):
        return self.it.get_state()

    def set_state(self, state):
        self.it.set_state(state)


ORIGINAL_BATCHES = loop.train_batches


def _recording(monkeypatch, seen, first=0, sigterm_at=None):
    monkeypatch.setattr(loop, "train_batches", lambda config, tok, batch_size: Recorder(
        ORIGINAL_BATCHES(config, tok, batch_size), seen, first, sigterm_at))


def _state(run_dir):
    _, meta = checkpoint.read_meta(run_dir)
    cfg = model_config_from(meta["run"]["model"])
    tc = train.TrainConfig.from_config(meta["run"]["train"])
    like = train.abstract_state(cfg, tc, train.make_optimizer(tc))
    return checkpoint.restore(checkpoint.manager(run_dir, read_only=True), like,
                              quarantine=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A straight 12-step run, and one stopped by SIGTERM after step 5 then resumed."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("runs")
    straight, resumed = root / "straight", root / "resumed"
    seen = {"straight": [], "stopped": [], "resumed": []}
    try:
        _recording(mp, seen["straight"])
        assert main(_args(straight)) == 0
        _recording(mp, seen["stopped"], sigterm_at=STOP_AT)
        codes = [main(_args(resumed))]
        handler_after = signal.getsignal(signal.SIGTERM)
        _recording(mp, seen["resumed"], first=STOP_AT)
        codes.append(main(_args(resumed)))
    finally:
        mp.undo()
    return straight, resumed, seen, codes, handler_after


def test_sigterm_saves_exits_75_and_resume_is_bit_identical(runs):
    straight, resumed, seen, codes, handler_after = runs
    assert codes == [loop.EXIT_PREEMPTED, 0] and handler_after == signal.SIG_DFL
    # The stopped run saved exactly at its stop step; the resume saw the remaining batches.
    assert len(seen["stopped"]) == STOP_AT and len(seen["resumed"]) == STEPS - STOP_AT
    batches = seen["stopped"] + seen["resumed"]
    assert len(seen["straight"]) == STEPS
    for a, b in zip(seen["straight"], batches, strict=True):
        np.testing.assert_array_equal(a, b)
    a, b = _state(straight), _state(resumed)
    assert a.step == b.step == STEPS and a.data_state == b.data_state
    for x, y in zip(jax.tree.leaves(a.state), jax.tree.leaves(b.state), strict=True):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # incl. EMA and guard


def test_poisoned_batch_skipped_and_logged(runs):
    straight, resumed, *_ = runs
    for run_dir in (straight, resumed):
        state = _state(run_dir).state
        assert int(state.guard["skipped"]) == 1  # counted in the checkpointed state
        records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert records[-1]["step"] == STEPS and records[-1]["skipped"] == 1
        assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(state.params))
        assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(state.ema))
    _, ema = checkpoint.load_params(resumed, use_ema=True)
    _, params = checkpoint.load_params(resumed)
    assert ema["wte"].dtype == params["wte"].dtype
    assert not np.array_equal(np.asarray(ema["wte"]), np.asarray(params["wte"]))


def test_checkpoint_of_another_model_is_one_line_error(runs, capsys):
    straight, *_ = runs
    assert main(_args(straight, f"--config.train.steps={STEPS + 2}",
                      "--config.model.mlp_hidden_size=96")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "different model" in err
    assert re.search(r"params/blocks/\w+ has shape \[2, (64, 128|128, 64)\] in the checkpoint "
                     r"but \[2, (64, 96|96, 64)\] here", err), err
    assert "mlp_hidden_size 128 vs 96" in err


def test_unwritable_workdir_is_one_line_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(_args(blocker / "run")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not writable" in err and "--workdir" in err


def test_sft_run_starts_from_init_from_params(runs, tmp_path):
    """`data.format=chat` trains on {"tokens", "prompt_lengths"} batches (SFT loss) from the
    params of `checkpoint.init_from`; with lr 0 they come out unchanged, bit for bit."""
    straight, *_ = runs
    assert main(["train", "--config", str(ROOT / "configs" / "sft_tiny.py"), "--workdir",
                 str(tmp_path), "--config.log.progress=false", "--config.train.steps=2",
                 "--config.train.lr=0.0", "--config.eval.every=2", "--config.eval.batches=1",
                 "--config.log.every=1", "--config.data.seq_len=48",
                 f"--config.checkpoint.init_from={straight}"]) == 0
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert np.isfinite(records[-1]["loss"]) and np.isfinite(records[-1]["eval_loss"])
    _, got = checkpoint.load_params(tmp_path)
    _, want = checkpoint.load_params(straight)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_init_from_another_model_is_one_line_error(runs, tmp_path, capsys):
    straight, *_ = runs
    assert main(_args(tmp_path / "new", "--config.model.n_layers=3",
                      f"--config.checkpoint.init_from={straight}")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "different model" in err and "[2, " in err
    assert "n_layers 2 vs 3" in err
