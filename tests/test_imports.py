"""The house rules of pyproject.toml hold: the import contracts ([tool.importlinter]: wings import
downwards only, no circles, the public faces and the loop kept for their callers), ruff's lint
and format, and `lint-imports` really catches a breach."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(tool: str, *args: str, root: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / tool), *args],
        cwd=root,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )


def test_import_contracts_are_kept():
    result = _run("lint-imports", "--no-cache")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Contracts: 4 kept, 0 broken." in result.stdout


def test_ruff_lint_and_format_are_clean():
    lint = _run("ruff", "check", "--no-cache", ".")
    assert lint.returncode == 0, lint.stdout[-3000:]
    fmt = _run(
        "ruff", "format", "--check", "--no-cache", "lladax", "tests", "benchmarks", "configs"
    )
    assert fmt.returncode == 0, f"run `uv run ruff format`:\n{fmt.stdout[-3000:]}"


def _breach(tmp_path: Path, module: str, line: str) -> subprocess.CompletedProcess:
    shutil.copytree(
        ROOT / "lladax", tmp_path / "lladax", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    path = tmp_path / "lladax" / module
    path.write_text(path.read_text() + f"\n{line}  # a deliberate breach\n")
    return _run("lint-imports", "--no-cache", root=tmp_path)


@pytest.mark.parametrize(
    "module, line, expected",
    [
        (
            "model/transformer.py",
            "from lladax.cli import common",
            [
                "lladax.model is not allowed to import lladax.cli",
                "lladax.model.transformer -> lladax.cli.common",
            ],
        ),
        (
            "data/sources.py",
            "from lladax.data import chat",
            ["No import circles", "No cycles are allowed in lladax.data", ".sources -> .chat"],
        ),
        (
            "diffusion/sampling.py",
            "from lladax import likelihood",
            ["The public faces", "- lladax.diffusion.sampling -> lladax.likelihood"],
        ),
    ],
)
def test_a_breach_breaks_the_build(tmp_path, module, line, expected):
    result = _breach(tmp_path, module, line)
    assert result.returncode == 1, result.stdout[-3000:]
    assert "BROKEN" in result.stdout
    for text in expected:
        assert text in result.stdout, (text, result.stdout[-3000:])
