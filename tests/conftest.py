"""Test setup: 8 fake CPU devices (so sharding is really exercised) and the shared fixtures."""

import os
from pathlib import Path

import jax
import pytest

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_platforms", "cpu")

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("LLADAX_FIXTURES", ROOT.parent / "shared" / "fixtures"))


@pytest.fixture(scope="session")
def tiny_llada_dir() -> Path:
    path = FIXTURES / "tiny_llada"
    if not (path / "config.json").exists():
        pytest.fail(f"fixtures not found at {path}: put ../shared beside the repo or set "
                    "LLADAX_FIXTURES")
    return path


@pytest.fixture(scope="session")
def tiny_llada(tiny_llada_dir):
    from lladax import convert
    return convert.load_hf(tiny_llada_dir)


@pytest.fixture(scope="session")
def golden(tiny_llada_dir):
    import numpy as np

    def load(case: str):
        return dict(np.load(tiny_llada_dir / "golden" / f"{case}.npz"))
    return load


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One cache per test run, shared by xdist workers (writes are atomic), so the default
    tokenizer trains about once per run."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    path = root / "lladax_cache"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(cache_dir):
    """Tests never read or write the user's ~/.cache/lladax."""
    old = os.environ.get("LLADAX_CACHE")
    os.environ["LLADAX_CACHE"] = str(cache_dir)
    yield
    if old is None:
        os.environ.pop("LLADAX_CACHE", None)
    else:
        os.environ["LLADAX_CACHE"] = old
