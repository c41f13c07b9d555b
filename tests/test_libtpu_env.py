"""libtpu is quiet on a machine without a TPU: defaults for what it would ask the metadata
server, never overriding the user's values, nothing on a TPU VM."""

import subprocess
import sys

from lladax import libtpu_env


def test_defaults_without_a_tpu(monkeypatch):
    monkeypatch.setattr(libtpu_env, "has_tpu", lambda: False)
    env = {"TPU_WORKER_ID": "3"}
    assert libtpu_env.quiet_without_tpu(env)
    assert env == {**libtpu_env.DEFAULTS, "TPU_WORKER_ID": "3"}  # the user's value wins


def test_nothing_changes_on_a_tpu_vm(monkeypatch):
    monkeypatch.setattr(libtpu_env, "has_tpu", lambda: True)
    env: dict[str, str] = {}
    assert not libtpu_env.quiet_without_tpu(env) and env == {}


def test_has_tpu_reads_the_device_files(monkeypatch):
    seen = []
    monkeypatch.setattr(libtpu_env.glob, "glob", lambda p: seen.append(p) or [])
    assert not libtpu_env.has_tpu() and seen == list(libtpu_env.TPU_DEVICE_FILES)
    monkeypatch.setattr(libtpu_env.glob, "glob", lambda p: ["/dev/vfio/0"] if "vfio" in p else [])
    assert libtpu_env.has_tpu()


def test_the_console_script_sets_them_before_jax_starts():
    code = (
        "import os, sys; from lladax.cli import main; "
        "rc = main(['plan', '--config', 'configs/tiny.py', '--hardware', 'v5e-8']); "
        "import jax; "
        "assert os.environ['TPU_SKIP_MDS_QUERY'] == '1', os.environ.get('TPU_SKIP_MDS_QUERY'); "
        "sys.exit(rc)"
    )
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("TPU_")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "TPU" not in out.stderr  # nothing from libtpu (installed or not)
