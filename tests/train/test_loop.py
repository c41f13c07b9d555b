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

from lladax.cli import main
from lladax.store import checkpoint, layout, params_checkpoint
from lladax.train import loop, trainer
from lladax.train.run_config import TrainConfig, model_config_from

ROOT = Path(__file__).resolve().parents[2]
STEPS, STOP_AT, POISON_AT = 12, 5, 8  # the 8th batch carries an id outside the vocabulary


def _args(workdir, *extra):
    return [
        "train",
        "--config",
        str(ROOT / "configs" / "tiny.py"),
        "--workdir",
        str(workdir),
        "--config.log.progress=false",
        f"--config.train.steps={STEPS}",
        "--config.train.ema_decay=0.9",
        "--config.eval.every=0",
        "--config.log.every=4",
        "--config.data.seq_len=32",
        *extra,
    ]


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
    monkeypatch.setattr(
        loop,
        "train_batches",
        lambda config, tok, batch_size: Recorder(
            ORIGINAL_BATCHES(config, tok, batch_size), seen, first, sigterm_at
        ),
    )


def _state(run_dir):
    _, meta = params_checkpoint.read_meta(run_dir)
    cfg = model_config_from(meta["run"]["model"])
    tc = TrainConfig.from_config(meta["run"]["train"])
    like = trainer.abstract_state(cfg, tc, trainer.make_optimizer(tc))
    return checkpoint.restore(layout.manager(run_dir, read_only=True), like, quarantine=False)


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
    _, ema = params_checkpoint.load_params(resumed, use_ema=True)
    _, params = params_checkpoint.load_params(resumed)
    assert ema["wte"].dtype == params["wte"].dtype
    assert not np.array_equal(np.asarray(ema["wte"]), np.asarray(params["wte"]))


def test_checkpoint_of_another_model_is_one_line_error(runs, capsys):
    straight, *_ = runs
    assert (
        main(
            _args(
                straight, f"--config.train.steps={STEPS + 2}", "--config.model.mlp_hidden_size=96"
            )
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "different model" in err
    assert re.search(
        r"params/blocks/\w+ has shape \[2, (64, 128|128, 64)\] in the checkpoint "
        r"but \[2, (64, 96|96, 64)\] here",
        err,
    ), err
    assert "mlp_hidden_size 128 vs 96" in err


def test_unwritable_workdir_is_one_line_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(_args(blocker / "run")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not writable" in err and "--workdir" in err


@pytest.mark.slow  # ~25 s; init_from and chat-format runs are exercised by test_preference_run
def test_sft_run_starts_from_init_from_params(runs, tmp_path):
    """`data.format=chat` trains on {"tokens", "prompt_lengths"} batches (SFT loss) from the
    params of `checkpoint.init_from`; with lr 0 they come out unchanged, bit for bit."""
    straight, *_ = runs
    assert (
        main(
            [
                "train",
                "--config",
                str(ROOT / "configs" / "sft_tiny.py"),
                "--workdir",
                str(tmp_path),
                "--config.log.progress=false",
                "--config.train.steps=2",
                "--config.train.lr=0.0",
                "--config.eval.every=2",
                "--config.eval.batches=1",
                "--config.log.every=1",
                "--config.data.seq_len=48",
                f"--config.checkpoint.init_from={straight}",
            ]
        )
        == 0
    )
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert np.isfinite(records[-1]["loss"]) and np.isfinite(records[-1]["eval_loss"])
    _, got = params_checkpoint.load_params(tmp_path)
    _, want = params_checkpoint.load_params(straight)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_init_from_another_model_is_one_line_error(runs, tmp_path, capsys):
    straight, *_ = runs
    assert (
        main(
            _args(
                tmp_path / "new",
                "--config.model.n_layers=3",
                f"--config.checkpoint.init_from={straight}",
            )
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "different model" in err and "[2, " in err
    assert "n_layers 2 vs 3" in err


def _copy_run(run_dir, dest):
    import shutil

    shutil.copytree(run_dir, dest)
    return dest


RESUME_REFUSED = [  # (extra argv, words): a resume of the straight run that cannot go on as asked
    (
        ["--config.model.rope_theta=10000.0"],
        "model.rope_theta=500000.0 there, 10000.0 now): resuming would change what its weights "
        "compute; set them back (--config.model.rope_theta=500000.0)",
    ),
    (["--config.model.rms_norm_eps=1e-06"], "model.rms_norm_eps=1e-05 there, 1e-06 now"),
    (
        ["--config.model.bos_token_id=5", "--config.model.eot_token_id=7"],
        "model.bos_token_id=1 there, 5 now, model.eot_token_id=3 there, 7 now",
    ),
    (
        [f"--config.train.steps={STEPS - 2}"],
        f"holds a checkpoint at step {STEPS}, past train.steps={STEPS - 2}: pass "
        f"--config.train.steps above {STEPS}",
    ),
    (["--stop-after", "3"], f"--stop-after 3 is before the checkpoint at step {STEPS}"),
]


@pytest.mark.parametrize("extra, words", RESUME_REFUSED, ids=[e[0] for e, _ in RESUME_REFUSED])
def test_resume_that_cannot_go_on_is_refused(runs, cli_error, extra, words):
    straight, *_ = runs
    line = cli_error(_args(straight, *extra), untouched=[straight])
    assert words in line, line


def test_resume_with_another_tokenizer_is_refused(runs, tmp_path, cli_error):
    run_dir = _copy_run(runs[0], tmp_path / "run")
    (run_dir / "tokenizer.model").write_bytes(b"another tokenizer")
    line = cli_error(_args(run_dir), untouched=[run_dir])
    assert "was trained with another tokenizer than data.tokenizer='embedded'" in line, line


def test_resume_names_what_it_changes(runs, capsys):
    """Settings that keep the function (remat, lr, ...) may change on resume: one warning names
    each; nothing is left to train at the last step, and the workdir stays as it was."""
    from conftest import tree_snapshot

    straight, *_ = runs
    before = tree_snapshot(straight)
    capsys.readouterr()
    assert (
        main(
            _args(
                straight,
                "--config.model.remat_policy=full",
                "--config.train.lr=0.001",
                "--config.checkpoint.init_from=" + str(straight),
            )
        )
        == 0
    )
    err = capsys.readouterr().err
    assert (
        "with changed settings (model.remat_policy 'none' -> 'full', train.lr 0.003 -> "
        "0.001): the run continues with the new values"
    ) in err, err
    assert "checkpoint.init_from is not used" in err and f"already at step {STEPS}" in err
    assert tree_snapshot(straight) == before


def test_sigterm_during_restore_stops_before_the_first_step(runs, tmp_path, monkeypatch, capsys):
    """The handlers are installed before the restore: a SIGTERM there stops the run before it
    takes a step (exit 75), with nothing new to save and the workdir as it was."""
    from conftest import tree_snapshot

    run_dir = _copy_run(runs[0], tmp_path / "run")
    before = tree_snapshot(run_dir)
    restore = checkpoint.restore

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return restore(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "restore", interrupted)
    assert main(_args(run_dir, f"--config.train.steps={STEPS + 2}")) == loop.EXIT_PREEMPTED
    err = capsys.readouterr().err
    assert (
        f"stopped by SIGTERM at step {STEPS}; the newest checkpoint in {run_dir} is step "
        f"{STEPS}: rerun the same command to resume" in err
    ), err
    assert tree_snapshot(run_dir) == before and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_zero_steps_saves_the_initial_params_and_says_so(runs, tmp_path, capsys):
    # (after `runs`: its compiled init and checksum programs are reused)
    run_dir = tmp_path / "init"
    assert main(_args(run_dir, "--config.train.steps=0")) == 0
    captured = capsys.readouterr()
    assert "train.steps=0: saving the initial params as step 0 without training" in captured.err
    assert json.loads(captured.out.splitlines()[0]) == {"step": 0, "stopped": None}
    assert (
        params_checkpoint.read_meta(run_dir)[0] == 0
        and params_checkpoint.load_params(run_dir)[0].n_layers
    )


def test_progress_bar_shows_dash_until_measured():
    """After a resume the first log point has no timed step and no eval yet: '-', not 0."""
    unmeasured = {"tokens_per_s": 0.0, "mfu": 0.0, "step_s": 0.0}
    assert loop._postfix(2.5, None, unmeasured, {}) == {
        "loss": "2.500",
        "eval": "-",
        "tok_s": "-",
        "mfu": "-",
    }
    measured = {"tokens_per_s": 1234.0, "mfu": 0.25, "step_s": 0.1}
    assert loop._postfix(2.5, 3.0, measured, {"hbm_peak_gib": 1.0}) == {
        "loss": "2.500",
        "eval": "3.000",
        "tok_s": "1,234",
        "mfu": "25.0%",
        "hbm": "1.0G",
    }


# --- signals around the final save (a real process) -------------------------------------------
def _wait_for_line(stream, words: str, seen: list) -> None:
    """Read `stream` line by line until one contains `words` (EOF: the child died)."""
    for line in iter(stream.readline, ""):
        seen.append(line)
        if words in line:
            return
    raise AssertionError(f"no {words!r} on stderr; the child said:\n{''.join(seen)[-3000:]}")


@pytest.mark.slow  # ~30 s; a SIGTERM mid-run saving and resuming bit-exactly runs in CI
def test_sigterm_twice_during_final_save_keeps_the_run(runs, tmp_path):  # runs: see the end
    """SIGTERM, then SIGTERM again, while the final checkpoint of a finished run is being
    written (default checkpoint.every=0: the only save): both wait for the save, which commits;
    the run is complete (exit 0) and resumes from it. The child holds its final save open
    ($LLADAX_TEST_HOLD_FINAL_SAVE) until the test has seen both signals handled."""
    import subprocess
    import sys
    import time

    run_dir, hold = tmp_path / "run", tmp_path / "hold"
    hold.mkdir()
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        JAX_NUM_CPU_DEVICES="8",
        LLADAX_TEST_HOLD_FINAL_SAVE=str(hold),
    )
    child = subprocess.Popen(
        [sys.executable, "-m", "lladax.cli", *_args(run_dir, "--config.train.steps=2")],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[str] = []
    try:
        deadline = time.time() + 300
        while not (hold / "held").exists() and child.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert (hold / "held").exists(), child.communicate()[1][-3000:]
        child.send_signal(signal.SIGTERM)
        _wait_for_line(
            child.stderr, "SIGTERM received while the final checkpoint is being written", seen
        )
        child.send_signal(signal.SIGTERM)
        _wait_for_line(
            child.stderr, "SIGTERM received again while a checkpoint is being written", seen
        )
        (hold / "release").touch()
        out, err = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == 0, "".join(seen) + err
    assert "SIGTERM arrived during the final checkpoint save; the save completed (step 2)" in err
    assert json.loads(out.splitlines()[0])["stopped"] is None
    assert (
        params_checkpoint.read_meta(run_dir)[0] == 2
        and params_checkpoint.load_params(run_dir)[0].n_layers
    )
    assert main(_args(run_dir)) == 0  # resumes from step 2 (with the program `runs` compiled)
    assert layout.manager(run_dir, read_only=True).latest_step() == STEPS
