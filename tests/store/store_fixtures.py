"""What the store tests share: a saved tiny training run (the model, run config and optimizer,
the two states after 1 and 2 train steps, a run directory holding both: `saved`) with helpers to
compare trees and damage a saved step, and a writable copy of the tiny HF checkpoint
(`ckpt_copy`). Test modules bind the fixtures they use."""

import dataclasses
import functools
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from lladax.config import preset
from lladax.store import checkpoint, layout
from lladax.train import trainer
from lladax.train.run_config import TrainConfig

CFG = preset("tiny")
TC = TrainConfig(steps=10, batch_size=8, lr=1e-3, truncate_prob=0.0, ema_decay=0.5)
META = {"model": dataclasses.asdict(CFG)}
OPT = trainer.make_optimizer(TC)


def restore_target(mesh=None, cfg=CFG):
    """An abstract TrainState (shapes + shardings) to restore into: allocates nothing."""
    return trainer.abstract_state(cfg, TC, OPT, mesh)


def as_array(x):
    return np.asarray(
        jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
    )


def equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(as_array(x), as_array(y))


@functools.cache
def _two_states():
    step = jax.jit(lambda s, b: trainer.train_step(s, b, cfg=CFG, tc=TC, optimizer=OPT))
    tokens = jax.random.randint(jax.random.key(1), (8, 16), 0, CFG.vocab_size)
    one = step(trainer.init_state(CFG, TC, OPT, jax.random.key(0)), {"tokens": tokens})[0]
    return one, step(one, {"tokens": tokens})[0]


@pytest.fixture
def states():
    """The states after 1 and 2 steps (not donated: every test saves them), computed once per
    process for every module that imports this fixture."""
    return _two_states()


@pytest.fixture
def saved(tmp_path, states):
    """A run dir with steps 1 and 2 (data states 'one' / 'two')."""
    mgr = layout.manager(tmp_path)
    for state, data_state in zip(states, ({"pos": "one"}, {"pos": "two"}), strict=True):
        checkpoint.save(mgr, state, META, data_state=data_state)
    mgr.wait_until_finished()
    return tmp_path, states


def data_files(step_dir: Path, item: str) -> list[Path]:
    return sorted(f for f in (step_dir / item).rglob("*") if f.is_file() and "/d/" in str(f))


def damage(step_dir: Path, how: str) -> None:
    if how == "bitflip":  # valid file, one bit of one array changed: only the checksum sees it
        f = max(data_files(step_dir, "params"), key=lambda f: f.stat().st_size)
        b = bytearray(f.read_bytes())
        b[len(b) // 2] ^= 0x01
        f.write_bytes(bytes(b))
    elif how == "truncated":  # a save cut short by a full disk / killed copy
        for f in data_files(step_dir, "train"):
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif how == "meta":
        (step_dir / "meta" / "metadata").write_text('{"model": {"vocab')


@pytest.fixture
def ckpt_copy(tiny_llada_dir, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(tiny_llada_dir, dst, ignore=shutil.ignore_patterns("golden"))
    return dst
