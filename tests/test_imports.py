"""The import rules of pyproject.toml's [tool.importlinter] hold, and `lint-imports` really
catches a breach (the library importing the CLI)."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = str(Path(sys.executable).with_name("lint-imports"))


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([LINT, "--no-cache"], cwd=root, capture_output=True, text=True,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, timeout=120)


def test_import_contracts_are_kept():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Contracts: 3 kept, 0 broken." in result.stdout


def test_a_library_module_importing_the_cli_breaks_the_build(tmp_path):
    shutil.copytree(ROOT / "lladax", tmp_path / "lladax",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    model = tmp_path / "lladax" / "model.py"
    model.write_text(model.read_text() + "\nfrom lladax.cli import common  # a deliberate breach\n")
    result = _lint(tmp_path)
    assert result.returncode == 1
    assert "The library never imports the CLI" in result.stdout and "BROKEN" in result.stdout
    assert "lladax.model -> lladax.cli.common" in result.stdout
