"""Orbax run checkpoints: exact restore, resharding, params-only/EMA restore, checksums, damaged
and foreign checkpoints, unwritable directories, and a SIGKILL during an async save."""

import dataclasses
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath

from lladax.config import preset
from lladax.model import sharding
from lladax.store import checkpoint
from lladax.train import trainer
from lladax.train.run_dir import MetricsFile

ROOT = Path(__file__).resolve().parents[2]
CFG = preset("tiny")
TC = trainer.TrainConfig(steps=10, batch_size=8, lr=1e-3, truncate_prob=0.0, ema_decay=0.5)
META = {"model": dataclasses.asdict(CFG)}


OPT = trainer.make_optimizer(TC)


def _target(mesh=None, cfg=CFG):
    """An abstract TrainState (shapes + shardings) to restore into: allocates nothing."""
    return trainer.abstract_state(cfg, TC, OPT, mesh)


def _np(x):
    return np.asarray(
        jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
    )


def _equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(_np(x), _np(y))


@pytest.fixture(scope="module")
def states():
    """The states after 1 and 2 steps (not donated: every test saves them)."""
    step = jax.jit(lambda s, b: trainer.train_step(s, b, cfg=CFG, tc=TC, optimizer=OPT))
    tokens = jax.random.randint(jax.random.key(1), (8, 16), 0, CFG.vocab_size)
    one = step(trainer.init_state(CFG, TC, OPT, jax.random.key(0)), {"tokens": tokens})[0]
    return one, step(one, {"tokens": tokens})[0]


@pytest.fixture
def saved(tmp_path, states):
    """A run dir with steps 1 and 2 (data states 'one' / 'two')."""
    mgr = checkpoint.manager(tmp_path)
    for state, data_state in zip(states, ({"pos": "one"}, {"pos": "two"}), strict=True):
        checkpoint.save(mgr, state, META, data_state=data_state)
    mgr.wait_until_finished()
    return tmp_path, states


def test_restore_is_exact(saved):
    run_dir, (_, two) = saved
    restored = checkpoint.restore(checkpoint.manager(run_dir), _target())
    assert restored.step == 2 and int(restored.state.step) == 2
    assert restored.data_state == {"pos": "two"} and restored.meta["model"] == META["model"]
    _equal(restored.state, two)  # params, optimizer state, rng, guard and EMA
    assert checkpoint.read_data_state(run_dir, 1) == {"pos": "one"}


@pytest.mark.parametrize("mesh_shape", [None, (1, 4, 2)], ids=["1-device", "4x2"])
def test_save_on_2x4_restore_on_other_meshes(tmp_path, states, mesh_shape):
    """Saved from a 2×4 (fsdp × tensor) mesh; restored onto one device and onto 4×2."""
    _, two = states
    save_mesh = sharding.make_mesh(data=1, fsdp=2, tensor=4)
    placed = jax.device_put(two, trainer.state_shardings(CFG, TC, OPT, save_mesh))
    assert placed.params["blocks"]["ff_proj"].sharding.spec == jax.sharding.PartitionSpec(
        None, "fsdp", "tensor"
    )
    mgr = checkpoint.manager(tmp_path)
    checkpoint.save(mgr, placed, META)
    mgr.wait_until_finished()
    if mesh_shape is None:
        mesh = sharding.make_mesh(devices=jax.devices()[:1])
    else:
        mesh = sharding.make_mesh(*mesh_shape)
    target = _target(mesh)
    restored = checkpoint.restore(checkpoint.manager(tmp_path), target).state
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(target), strict=True):
        assert got.sharding == want.sharding
    assert len(restored.params["wte"].sharding.device_set) == (1 if mesh_shape is None else 8)
    _equal(restored, two)


def test_params_only_and_ema_load(saved):
    run_dir, (_, two) = saved
    cfg, params = checkpoint.load_params(run_dir)
    assert cfg == CFG
    _equal(params, two.params)
    _, ema = checkpoint.load_params(run_dir, use_ema=True)
    _equal(ema, two.ema)
    assert not all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(ema), jax.tree.leaves(params), strict=True)
    )
    _equal(checkpoint.load_params(run_dir, 1)[1], saved[1][0].params)  # an older saved step
    with pytest.raises(
        checkpoint.CheckpointError, match=r"has no step 7: the saved steps are \[1, 2\]"
    ) as e:
        checkpoint.load_params(run_dir, 7)
    assert "\n" not in str(e.value)


def test_incomplete_save_is_never_picked_up(saved):
    run_dir, (_, two) = saved
    # A crash mid-save leaves only a temporary directory behind: it is not a checkpoint.
    partial = run_dir / "checkpoints" / "5.orbax-checkpoint-tmp-123"
    partial.mkdir()
    (partial / "params").mkdir()
    assert checkpoint.manager(run_dir, read_only=True).latest_step() == 2
    _equal(checkpoint.load_params(run_dir)[1], two.params)
    checkpoint.manager(run_dir)  # a writable manager clears the leftover
    time.sleep(0.5)
    assert not partial.exists()


def _data_files(step_dir: Path, item: str) -> list[Path]:
    return sorted(f for f in (step_dir / item).rglob("*") if f.is_file() and "/d/" in str(f))


def _damage(step_dir: Path, how: str) -> None:
    if how == "bitflip":  # valid file, one bit of one array changed: only the checksum sees it
        f = max(_data_files(step_dir, "params"), key=lambda f: f.stat().st_size)
        b = bytearray(f.read_bytes())
        b[len(b) // 2] ^= 0x01
        f.write_bytes(bytes(b))
    elif how == "truncated":  # a save cut short by a full disk / killed copy
        for f in _data_files(step_dir, "train"):
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif how == "meta":
        (step_dir / "meta" / "metadata").write_text('{"model": {"vocab')


@pytest.mark.parametrize("how", ["bitflip", "truncated", "meta"])
def test_damaged_latest_falls_back_with_warning(saved, how):
    run_dir, (one, _) = saved
    _damage(run_dir / "checkpoints" / "2", how)
    with pytest.warns(checkpoint.CheckpointWarning, match="checkpoints/2 is damaged") as got:
        restored = checkpoint.restore(checkpoint.manager(run_dir), _target())
    message = str(got[0].message)  # one readable line: no TensorStore spec dump / bound method
    assert "\n" not in message and "TensorStore details" not in message, message
    assert "tensorstore_spec" not in message and "<bound method" not in message, message
    assert restored.step == 1 and restored.data_state == {"pos": "one"}
    _equal(restored.state, one)
    # The damaged step is moved aside (so it is neither reused nor overwritten by the resume).
    assert (run_dir / "corrupt_checkpoints" / "2").is_dir()
    assert checkpoint.manager(run_dir).all_steps() == [1]


def test_reading_a_run_logs_no_read_only_notice(saved, caplog):
    """Orbax's `Given directory is read only` (on every sample/eval) is dropped; other absl
    warnings still pass."""
    run_dir, _ = saved
    with caplog.at_level(logging.INFO):
        checkpoint.read_meta(run_dir)
        logging.getLogger("absl").warning("another absl warning")
    messages = [r.getMessage() for r in caplog.records]
    assert not any("read only" in m for m in messages) and "another absl warning" in messages


def test_tensorstore_errors_are_one_short_line():
    spec = ' [tensorstore_spec=\'{"driver":"zarr"}\']'
    inner = ValueError(
        'DATA_LOSS: Error opening "zarr" driver: Error reading "wte/.zarray" in '
        'OCDBT database at local file "/r/params/": Error decoding b-tree node: '
        "Expected to start with 0cdb20de but received: 0x91; at byte 4" + spec
    )
    assert checkpoint.describe_error(inner) == (
        "ValueError: DATA_LOSS reading wte: Error decoding b-tree node: Expected to start with "
        "0cdb20de but received: 0x91; at byte 4"
    )
    try:  # Orbax wraps it: the wrapper's spec suffix goes, its cause is kept
        raise Exception(
            "Encountered error while reading array index: (0,). See full "
            "TensorStore details: <bound method PyCapsule.spec of <Array>>."
        ) from inner
    except Exception as e:
        text = checkpoint.describe_error(e)
    assert text.startswith(
        "Exception: Encountered error while reading array index: (0,) ("
        "ValueError: DATA_LOSS reading wte: Error decoding"
    ), text
    assert "bound method" not in text and "tensorstore_spec" not in text


def test_metrics_file_on_resume_drops_redone_and_torn_records(tmp_path):
    """A run killed after logging step 12 but checkpointed at 8 resumes at 8: the records of
    steps 9..12 are redone, so they go (each step is logged once); a line torn by the kill
    goes too (the next append would be glued to it)."""
    path = tmp_path / "metrics.jsonl"
    records = [
        {"step": 0, "eval_loss": 9.0},
        {"step": 4, "loss": 5.0, "eval_loss": 4.0},
        {"step": 8, "loss": 3.0},
        {"step": 12, "loss": 2.0, "eval_loss": 1.0},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 16, "lo')
    metrics = MetricsFile(epath.Path(path), True)
    assert metrics.resume(8) == 4.0  # the last eval loss up to the resumed step
    metrics.write({"step": 9, "loss": 2.5})
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [0, 4, 8, 9]
    before = path.read_bytes()
    assert MetricsFile(epath.Path(path), True).resume(9) == 4.0 and path.read_bytes() == before


def test_damaged_latest_params_only_load_falls_back(saved):
    run_dir, (one, _) = saved
    _damage(run_dir / "checkpoints" / "2", "bitflip")
    with pytest.warns(checkpoint.CheckpointWarning, match="using the previous one"):
        _, params = checkpoint.load_params(run_dir)
    _equal(params, one.params)


def test_no_good_checkpoint_is_one_line_error(saved):
    run_dir, _ = saved
    for step in ("1", "2"):
        _damage(run_dir / "checkpoints" / step, "bitflip")
    with (
        pytest.warns(checkpoint.CheckpointWarning),
        pytest.raises(checkpoint.CheckpointError, match="no good checkpoint") as e,
    ):
        checkpoint.restore(checkpoint.manager(run_dir), _target())
    assert "\n" not in str(e.value) and "checksum" in str(e.value)
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoints/ directory"):
        checkpoint.load_params(run_dir / "nowhere")


def test_checkpoint_of_another_model_names_the_mismatch(saved):
    run_dir, _ = saved
    wider = CFG.replace(d_model=128)
    with pytest.raises(checkpoint.CheckpointMismatchError) as e:
        checkpoint.restore(checkpoint.manager(run_dir), _target(cfg=wider), model_cfg=wider)
    message = str(e.value)
    assert "different model" in message
    assert re.search(
        r"params/blocks/\S+ has shape \[2, 64\] in the checkpoint but \[2, 128\] "
        "here",
        message,
    ), message
    assert "d_model 64 vs 128" in message and "\n" not in message
    assert checkpoint.manager(run_dir).all_steps() == [1, 2]  # nothing quarantined


def test_params_only_dir_is_not_a_training_state(tmp_path, states):
    checkpoint.save_params(tmp_path, CFG, states[0].params)
    with pytest.raises(checkpoint.CheckpointMismatchError, match="holds params only.*init_from"):
        checkpoint.restore(checkpoint.manager(tmp_path), _target())


def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(checkpoint.CheckpointError, match="is not writable.*--workdir"):
        checkpoint.check_writable(blocker / "run")


def test_checksum_sees_one_bit_and_moves_but_not_sharding():
    x = jax.random.normal(jax.random.key(0), (8, 16))
    base = checkpoint.checksums({"x": x})["x"]
    flipped = jax.lax.bitcast_convert_type(
        jax.lax.bitcast_convert_type(x, jnp.uint32).at[3, 7].add(1), jnp.float32
    )
    assert checkpoint.checksums({"x": flipped})["x"] != base
    assert checkpoint.checksums({"x": x[::-1]})["x"] != base
    assert checkpoint.checksums({"x": x.T.reshape(8, 16)})["x"] != base
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    spread = jax.device_put(
        x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data", "tensor"))
    )
    assert checkpoint.checksums({"x": spread})["x"] == base


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
    assert checkpoint.manager(killed, read_only=True).all_steps() == [2]
    assert main(_train_args(killed)) == 0  # resumes from step 2
    assert main(_train_args(straight)) == 0
    _, resumed = checkpoint.load_params(killed)
    _, expected = checkpoint.load_params(straight)
    _equal(resumed, expected)
    assert checkpoint.read_data_state(killed) == checkpoint.read_data_state(straight)
