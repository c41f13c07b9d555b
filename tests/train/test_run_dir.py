"""The run directory's own files: metrics.jsonl across kills and resumes."""

import json

from etils import epath

from lladax.train.run_dir import MetricsFile


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
