"""The checkpoints directory and its manager (`layout`): a torn save is never a checkpoint and a
writable manager clears it, reading a run logs no read-only notice, an unwritable workdir is
refused in one line."""

import logging
import time

import pytest
import store_fixtures
from store_fixtures import equal

from lladax.store import layout, params_checkpoint
from lladax.store.integrity import CheckpointError

saved, states = store_fixtures.saved, store_fixtures.states  # the shared fixtures


def test_incomplete_save_is_never_picked_up(saved):
    run_dir, (_, two) = saved
    # A crash mid-save leaves only a temporary directory behind: it is not a checkpoint.
    partial = run_dir / "checkpoints" / "5.orbax-checkpoint-tmp-123"
    partial.mkdir()
    (partial / "params").mkdir()
    assert layout.manager(run_dir, read_only=True).latest_step() == 2
    equal(params_checkpoint.load_params(run_dir)[1], two.params)
    layout.manager(run_dir)  # a writable manager clears the leftover
    time.sleep(0.5)
    assert not partial.exists()


def test_reading_a_run_logs_no_read_only_notice(saved, caplog):
    """Orbax's `Given directory is read only` (on every sample/eval) is dropped; other absl
    warnings still pass."""
    run_dir, _ = saved
    with caplog.at_level(logging.INFO):
        params_checkpoint.read_meta(run_dir)
        logging.getLogger("absl").warning("another absl warning")
    messages = [r.getMessage() for r in caplog.records]
    assert not any("read only" in m for m in messages) and "another absl warning" in messages


def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(CheckpointError, match="is not writable.*--workdir"):
        layout.check_writable(blocker / "run")
