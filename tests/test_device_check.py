"""benchmarks/device_check.py: the prepared GPU check runs end to end on CPU in its tiny mode,
so a session lent a device knows the script works before it spends device time on it."""

import importlib.util
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_device_check_tiny_writes_a_complete_table(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # as `python benchmarks/x.py` has it
    spec = importlib.util.spec_from_file_location(
        "device_check", ROOT / "benchmarks" / "device_check.py"
    )
    device_check = importlib.util.module_from_spec(spec)
    sys.modules["device_check"] = device_check  # dataclasses look their module up there
    spec.loader.exec_module(device_check)
    out = tmp_path / "check.md"
    assert device_check.main(["--tiny", "--out", str(out)]) == 0
    table = out.read_text()
    rows = {
        line.split(" | ")[0].lstrip("| "): line
        for line in table.splitlines()
        if line.startswith("| ") and not line.startswith("| row")
    }
    assert set(rows) == {"train xla", "train cudnn", "sample exact b2", "sample fast b2"}
    assert "n/a (needs a GPU)" in rows["train cudnn"]  # CPU: the cuDNN row is marked, not faked
    result = json.loads(out.with_suffix(".json").read_text())
    measured = [r for r in result["rows"] if not r.get("skipped")]
    assert all(r["seconds"] > 0 and math.isfinite(r["tokens_per_s"]) for r in measured)
    train = measured[0]
    assert train["mfu_matmul"] > 0 and math.isfinite(train["loss"])
    assert result["meta"]["command"] == "benchmarks/device_check.sh --tiny"
    assert measured[-1]["nfe"] <= 16  # the fast sampler never needs more than one pass a token
