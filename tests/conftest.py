"""Test setup: 8 fake CPU devices (so sharding is really exercised) and the shared fixtures."""

import os
from pathlib import Path

# Tests compile with LLVM's optimisation level 0: XLA compilation is most of the suite's time on
# a 2-core machine, and -O0 cuts it by about a third (measured: the scaling + sampler experiment
# and CLI train smoke tests 112 s -> 71 s, cold cache). Tests check behaviour against tolerances
# and against each other, never speed; the library and benchmarks keep XLA's defaults. Set here,
# before JAX starts, so xdist workers and the subprocesses they start compile the same way.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()

import jax
import pytest

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_platforms", "cpu")

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("LLADAX_FIXTURES", ROOT.parent / "shared" / "fixtures"))

# Most of the suite's time is XLA compilation, and many tests compile the same programs (the tiny
# train step, the sampler) in fresh `jax.jit` objects or in subprocesses. JAX's persistent cache,
# shared by the xdist workers and the subprocesses they start, compiles each program once per
# run (and once per checkout on a developer's machine: the key is the program, never stale).
JAX_CACHE = Path(os.environ.get("LLADAX_TEST_JAX_CACHE", ROOT / ".cache" / "jax_tests"))
JAX_CACHE.mkdir(parents=True, exist_ok=True)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(JAX_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture(scope="session")
def tiny_llada_dir() -> Path:
    path = FIXTURES / "tiny_llada"
    if not (path / "config.json").exists():
        pytest.fail(
            f"fixtures not found at {path}: put ../shared beside the repo or set LLADAX_FIXTURES"
        )
    return path


@pytest.fixture(scope="session")
def tiny_llada(tiny_llada_dir):
    from lladax.store import convert

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


@pytest.fixture(scope="session")
def tok(cache_dir):
    """The default sentencepiece tokenizer at 512 ids (trained once per run, cached)."""
    from lladax.data.tokenizer import load_tokenizer

    return load_tokenizer("embedded", vocab_size=512, cache_dir=cache_dir)


# --- small corpora written by the data tests (import: `from conftest import write_txt`) ----------
def write_txt(path: Path, n: int = 60) -> list[str]:
    """A .txt file of `n` two-line documents separated by blank lines; returns the documents."""
    docs = [f"Document number {i}.\nIt has two lines about topic {i % 7}." for i in range(n)]
    path.write_text("\n\n".join(docs) + "\n\n\n")
    return docs


def text_corpus(directory: Path, n: int = 150) -> list[str]:
    """A directory with a .txt and a .jsonl file (text field "body"); returns its documents in
    reading order."""
    import json

    directory.mkdir(parents=True, exist_ok=True)
    txt = [f"Plain doc {i}: " + " ".join(f"w{j}" for j in range(i % 23)) for i in range(n)]
    (directory / "a.txt").write_text("\n\n".join(txt))
    body = [f"json doc {i} " + "x" * (i % 50) for i in range(n // 2)]
    (directory / "b.jsonl").write_text(
        "\n".join(json.dumps({"body": b, "id": i}) for i, b in enumerate(body))
    )
    return txt + body


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


# --- the CLI error harness (used by every module's table of refused inputs) --------------------
def tree_snapshot(*roots: Path) -> dict[str, bytes | None]:
    """{path: bytes} of every file under `roots` (a directory maps to None): compare a snapshot
    taken before a refused command with one taken after to prove nothing on disk changed."""
    snap: dict[str, bytes | None] = {}
    for root in roots:
        root = Path(root)
        if root.is_file():
            snap[str(root)] = root.read_bytes()
            continue
        if not root.exists():
            snap[str(root)] = b"<absent>"
            continue
        for p in sorted(root.rglob("*")):
            snap[str(p)] = None if p.is_dir() else p.read_bytes()
    return snap


@pytest.fixture
def cli_error(capsys):
    """Run `lladax ARGV` in-process, expecting a refusal: returns the one stderr line.

        line = cli_error(["sample", ...], code=2, untouched=[run_dir])

    asserts the exit code, that stderr's last non-empty line starts with `lladax <command>:
    error:` (no traceback), and that every file under `untouched` is byte-identical afterwards.
    """
    from lladax.cli import main

    def run(argv: list[str], *, code: int = 2, untouched: tuple | list = ()) -> str:
        before = tree_snapshot(*untouched)
        capsys.readouterr()
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:  # argparse usage errors
            rc = e.code
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert rc == code, f"exit code {rc} != {code}; stderr:\n{err}"
        assert lines, "no message on stderr"
        assert "Traceback" not in err, err
        assert tree_snapshot(*untouched) == before, "a refused command changed files on disk"
        return lines[-1]

    return run
