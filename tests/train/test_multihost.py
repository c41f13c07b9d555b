"""Multi-process training: flag/env resolution, and two processes × 4 CPU devices (jax.distributed
on localhost, gloo collectives) training with checkpoints and resuming like one 8-device process."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import portpicker
import pytest

from lladax.cli import main
from lladax.data import pipeline
from lladax.store import layout, params_checkpoint
from lladax.train import distributed, loop

ROOT = Path(__file__).resolve().parents[2]


# --- resolving the settings ----------------------------------------------------------------------
def test_resolve_off_auto_explicit_and_env():
    assert distributed.resolve(env={}) is None
    assert distributed.resolve(mode="auto", env={}) == {}
    explicit = dict(coordinator_address="10.0.0.2:8476", num_processes=4, process_id=3)
    assert distributed.resolve(**explicit, env={}) == explicit
    env = {
        "LLADAX_COORDINATOR_ADDRESS": "h:1",
        "LLADAX_NUM_PROCESSES": "2",
        "LLADAX_PROCESS_ID": "1",
    }
    assert distributed.resolve(env=env) == dict(
        coordinator_address="h:1", num_processes=2, process_id=1
    )
    # Flags win over the environment, one field at a time.
    assert distributed.resolve(process_id=0, env=env)["process_id"] == 0


@pytest.mark.parametrize(
    "kwargs, env, message",
    [
        (dict(num_processes=2), {}, "needs --coordinator-address .*LLADAX_COORDINATOR_ADDRESS"),
        (
            dict(coordinator_address="h:1", num_processes=2, process_id=2),
            {},
            "must be in \\[0, 2\\)",
        ),
        (dict(coordinator_address="nohost", num_processes=2, process_id=0), {}, "HOST:PORT"),
        ({}, {"LLADAX_NUM_PROCESSES": "two"}, "is not an integer"),
        (dict(mode="on"), {}, "unknown"),
    ],
)
def test_resolve_rejects_bad_settings(kwargs, env, message):
    with pytest.raises(distributed.DistributedError, match=message):
        distributed.resolve(**kwargs, env=env)


def test_cli_incomplete_flags_one_line_error(tmp_path, capsys):
    assert (
        main(
            [
                "train",
                "--config",
                str(ROOT / "configs" / "tiny.py"),
                "--workdir",
                str(tmp_path),
                "--num-processes",
                "2",
                "--process-id",
                "0",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--coordinator-address" in err


# --- two real processes --------------------------------------------------------------------------
ARGS = [
    "--config.log.progress=false",
    "--config.train.steps=3",
    "--config.eval.every=0",
    "--config.log.every=1",
    "--config.checkpoint.every=1",
    "--config.data.seq_len=32",
    "--config.train.ema_decay=0.9",
]


# Process 1 gets a SIGTERM while fetching its 1st batch: JAX's preemption notifier tells the
# other process, both agree on a step (the sync point), save it and exit with code 75. The
# sync point must come before the last of the 3 steps: a stop there is no stop (the run is
# complete, exit 0), and more steps would let the 2-process vs 1-process rounding grow.
_PREEMPTED_CHILD = """
import os, signal, sys
import jax
from lladax.train import loop
from lladax.cli import main

batches = loop.train_batches

class Preempted:
    def __init__(self, it):
        self.it, self.n = it, 0
    def __next__(self):
        self.n += 1
        if self.n == 1 and jax.process_index() == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return next(self.it)
    def get_state(self):
        return self.it.get_state()
    def set_state(self, state):
        self.it.set_state(state)

loop.train_batches = lambda *args: Preempted(batches(*args))
sys.exit(main(sys.argv[1:]))
"""


def _two_processes(workdir: Path, cache: Path, preempt: bool = False) -> list[str]:
    port = portpicker.pick_unused_port()
    # The persistent compilation cache lets the resume reuse the first launch's programs.
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        JAX_NUM_CPU_DEVICES="4",
        JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )
    entry = ["-c", _PREEMPTED_CHILD] if preempt else ["-m", "lladax.cli"]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                *entry,
                "train",
                "--config",
                str(ROOT / "configs" / "tiny.py"),
                "--workdir",
                str(workdir),
                "--coordinator-address",
                f"127.0.0.1:{port}",
                "--num-processes",
                "2",
                "--process-id",
                str(i),
                *ARGS,
            ],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(2)
    ]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=400)[0].decode())
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == (loop.EXIT_PREEMPTED if preempt else 0), out[-3000:]
    assert "saved to" in outs[0] and "saved to" not in outs[1]  # process 0 reports
    return outs


class _BothProcesses:
    """One process's view of the two processes' data: the global batch is process 0's rows
    followed by process 1's (the order `make_array_from_process_local_data` lays them out)."""

    def __init__(self, its):
        self.its = its

    def __next__(self):
        parts = [next(it) for it in self.its]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def get_state(self):
        return [it.get_state() for it in self.its]

    def set_state(self, state):
        for it, s in zip(self.its, state, strict=True):
            it.set_state(s)


@pytest.mark.slow  # ~55 s: two processes train; the mesh, sharding and restore parts run in CI
def test_two_processes_train_checkpoint_resume_like_one(tmp_path, monkeypatch):
    multi, single = tmp_path / "multi", tmp_path / "single"
    outs = _two_processes(multi, tmp_path / "jax_cache", preempt=True)
    stops = [re.findall(r"stopped by preemption at step (\d+)", out) for out in outs]
    assert stops[0] == stops[1] and len(stops[0]) == 1, outs  # both hosts, the same step
    stop = int(stops[0][0])
    assert layout.manager(multi, read_only=True).latest_step() == stop
    assert sorted(
        p.name for p in (multi / "checkpoints" / str(stop) / "data").glob("process_*")
    ) == ["process_0-of-2.json", "process_1-of-2.json"]
    _two_processes(multi, tmp_path / "jax_cache")  # resumes; each process from its own position
    records = [json.loads(x) for x in (multi / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]  # one writer, nothing repeated

    def both(config, tok, batch_size):
        return _BothProcesses(
            [
                pipeline.make_batches(
                    tok,
                    source=config.data.source,
                    split="train",
                    seq_len=config.data.seq_len,
                    batch_size=batch_size // 2,
                    seed=config.data.seed,
                    process_index=i,
                    process_count=2,
                )
                for i in range(2)
            ]
        )

    monkeypatch.setattr(loop, "train_batches", both)
    assert (
        main(
            [
                "train",
                "--config",
                str(ROOT / "configs" / "tiny.py"),
                "--workdir",
                str(single),
                *ARGS,
            ]
        )
        == 0
    )
    assert jax.device_count() == 8
    for use_ema in (False, True):
        _, got = params_checkpoint.load_params(multi, use_ema=use_ema)
        _, want = params_checkpoint.load_params(single, use_ema=use_ema)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
