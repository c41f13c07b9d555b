"""Saving and restoring a TrainState (`checkpoint`): exact restore, resharding, damaged and
foreign checkpoints, and a SIGKILL during an async save."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import pytest
import store_fixtures
from store_fixtures import CFG, META, OPT, TC, damage, equal, restore_target

from lladax.model import sharding
from lladax.store import checkpoint, integrity, layout, params_checkpoint
from lladax.train import trainer

ROOT = Path(__file__).resolve().parents[2]

saved, states = store_fixtures.saved, store_fixtures.states  # the shared fixtures


def test_restore_is_exact(saved):
    run_dir, (_, two) = saved
    restored = checkpoint.restore(layout.manager(run_dir), restore_target())
    assert restored.step == 2 and int(restored.state.step) == 2
    assert restored.data_state == {"pos": "two"} and restored.meta["model"] == META["model"]
    equal(restored.state, two)  # params, optimizer state, rng, guard and EMA
    assert params_checkpoint.read_data_state(run_dir, 1) == {"pos": "one"}


@pytest.mark.parametrize("mesh_shape", [None, (1, 4, 2)], ids=["1-device", "4x2"])
def test_save_on_2x4_restore_on_other_meshes(tmp_path, states, mesh_shape):
    """Saved from a 2×4 (fsdp × tensor) mesh; restored onto one device and onto 4×2."""
    _, two = states
    save_mesh = sharding.make_mesh(data=1, fsdp=2, tensor=4)
    placed = jax.device_put(two, trainer.state_shardings(CFG, TC, OPT, save_mesh))
    assert placed.params["blocks"]["ff_proj"].sharding.spec == jax.sharding.PartitionSpec(
        None, "fsdp", "tensor"
    )
    mgr = layout.manager(tmp_path)
    checkpoint.save(mgr, placed, META)
    mgr.wait_until_finished()
    if mesh_shape is None:
        mesh = sharding.make_mesh(devices=jax.devices()[:1])
    else:
        mesh = sharding.make_mesh(*mesh_shape)
    target = restore_target(mesh)
    restored = checkpoint.restore(layout.manager(tmp_path), target).state
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(target), strict=True):
        assert got.sharding == want.sharding
    assert len(restored.params["wte"].sharding.device_set) == (1 if mesh_shape is None else 8)
    equal(restored, two)


@pytest.mark.parametrize("how", ["bitflip", "truncated", "meta"])
def test_damaged_latest_falls_back_with_warning(saved, how):
    run_dir, (one, _) = saved
    damage(run_dir / "checkpoints" / "2", how)
    with pytest.warns(integrity.CheckpointWarning, match="checkpoints/2 is damaged") as got:
        restored = checkpoint.restore(layout.manager(run_dir), restore_target())
    message = str(got[0].message)  # one readable line: no TensorStore spec dump / bound method
    assert "\n" not in message and "TensorStore details" not in message, message
    assert "tensorstore_spec" not in message and "<bound method" not in message, message
    assert restored.step == 1 and restored.data_state == {"pos": "one"}
    equal(restored.state, one)
    # The damaged step is moved aside (so it is neither reused nor overwritten by the resume).
    assert (run_dir / "corrupt_checkpoints" / "2").is_dir()
    assert layout.manager(run_dir).all_steps() == [1]


def test_no_good_checkpoint_is_one_line_error(saved):
    run_dir, _ = saved
    for step in ("1", "2"):
        damage(run_dir / "checkpoints" / step, "bitflip")
    with (
        pytest.warns(integrity.CheckpointWarning),
        pytest.raises(integrity.CheckpointError, match="no good checkpoint") as e,
    ):
        checkpoint.restore(layout.manager(run_dir), restore_target())
    assert "\n" not in str(e.value) and "checksum" in str(e.value)
    with pytest.raises(integrity.CheckpointError, match="no checkpoints/ directory"):
        params_checkpoint.load_params(run_dir / "nowhere")


def test_checkpoint_of_another_model_names_the_mismatch(saved):
    run_dir, _ = saved
    wider = CFG.replace(d_model=128)
    with pytest.raises(integrity.CheckpointMismatchError) as e:
        checkpoint.restore(layout.manager(run_dir), restore_target(cfg=wider), model_cfg=wider)
    message = str(e.value)
    assert "different model" in message
    assert re.search(
        r"params/blocks/\S+ has shape \[2, 64\] in the checkpoint but \[2, 128\] "
        "here",
        message,
    ), message
    assert "d_model 64 vs 128" in message and "\n" not in message
    assert layout.manager(run_dir).all_steps() == [1, 2]  # nothing quarantined


def test_params_only_dir_is_not_a_training_state(tmp_path, states):
    params_checkpoint.save_params(tmp_path, CFG, states[0].params)
    with pytest.raises(integrity.CheckpointMismatchError, match="holds params only.*init_from"):
        checkpoint.restore(layout.manager(tmp_path), restore_target())


# --- a real process killed while its async save is in flight ------------------------------------
_CHILD = """
import asyncio, sys
from pathlib import Path
from orbax.checkpoint._src.path import atomicity
from lladax.cli import main

marker, hang_step = Path(sys.argv[1]), sys.argv[2]
finalize = atomicity.AtomicRenameTemporaryPath.finalize

async def frozen_finalize(self):  # the save of `hang_step` is written but never committed
    if self.get_final().name == hang_step:
        marker.write_text("in flight")
        await asyncio.sleep(3600)
    return await finalize(self)

atomicity.AtomicRenameTemporaryPath.finalize = frozen_finalize
sys.exit(main(sys.argv[3:]))
"""


def _train_args(workdir, steps=6):
    return [
        "train",
        "--config",
        str(ROOT / "configs" / "tiny.py"),
        "--workdir",
        str(workdir),
        "--config.log.progress=false",
        f"--config.train.steps={steps}",
        "--config.eval.every=0",
        "--config.log.every=2",
        "--config.checkpoint.every=2",
        "--config.data.seq_len=32",
    ]


def test_sigkill_during_async_save_resumes_from_previous(tmp_path):
    from lladax.cli import main

    killed, straight = tmp_path / "killed", tmp_path / "straight"
    marker = tmp_path / "marker"
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="8")
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(marker), "4", *_train_args(killed)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 300
    while not marker.exists() and child.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert marker.exists(), child.communicate()[1].decode()[-2000:]
    child.send_signal(signal.SIGKILL)
    child.wait()
    ckpts = killed / "checkpoints"
    assert any(".orbax-checkpoint-tmp" in p.name for p in ckpts.iterdir())  # the torn save
    assert layout.manager(killed, read_only=True).all_steps() == [2]
    assert main(_train_args(killed)) == 0  # resumes from step 2
    assert main(_train_args(straight)) == 0
    _, resumed = params_checkpoint.load_params(killed)
    _, expected = params_checkpoint.load_params(straight)
    equal(resumed, expected)
    assert params_checkpoint.read_data_state(killed) == params_checkpoint.read_data_state(straight)
