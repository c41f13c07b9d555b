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
