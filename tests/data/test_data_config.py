"""The `data` section of a run config: its defaults, checks and what the pipeline reads."""

import dataclasses

import pytest

from lladax.config import ConfigError
from lladax.data import pipeline
from lladax.data.data_config import DataConfig
from lladax.data.sources import FORMATS


def test_defaults_and_the_pipeline_options():
    d = DataConfig()
    assert (d.source, d.format, d.seq_len, d.pack, d.workers) == ("embedded", "text", 128, False, 0)
    assert d.tokenizer_spec == "embedded" and DataConfig(tokenizer="t.model").tokenizer_spec == (
        "t.model"
    )
    packed = dataclasses.replace(d, pack=True, workers=2, field="body", seed=3)
    assert pipeline.options_from_config(packed) == dict(
        source="embedded", seq_len=128, seed=3, field="body", pack=True, workers=2
    )


@pytest.mark.parametrize(
    "changes, words",
    [
        (dict(format="xml"), f"data.format='xml' must be one of {FORMATS}"),
        (dict(seq_len=32, min_answer_len=32), "data.min_answer_len=32 leaves no room for a prompt"),
        (dict(source=""), "(embedded, a .txt/.jsonl file or directory, prepared data, tfds:NAME)"),
        (dict(workers=-1), "data.workers=-1 must be an int >= 0"),
    ],
)
def test_bad_values_are_one_line(changes, words):
    with pytest.raises(ConfigError) as e:
        DataConfig(**changes)
    assert words in str(e.value) and "\n" not in str(e.value)
