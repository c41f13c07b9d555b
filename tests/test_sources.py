"""Source specs (a prepared directory is recognised), JSONL fields, TFDS sources."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lladax import data, sources
from lladax import tokenizer as T


@pytest.fixture(scope="module")
def tok(cache_dir) -> T.SentencePieceTokenizer:
    return T.default_tokenizer(512, cache_dir=cache_dir)


def _corpus(directory: Path, n: int = 150) -> list[str]:
    """A directory with a .txt and a .jsonl file; returns its documents in reading order."""
    directory.mkdir(parents=True, exist_ok=True)
    txt = [f"Plain doc {i}: " + " ".join(f"w{j}" for j in range(i % 23)) for i in range(n)]
    (directory / "a.txt").write_text("\n\n".join(txt))
    body = [f"json doc {i} " + "x" * (i % 50) for i in range(n // 2)]
    (directory / "b.jsonl").write_text("\n".join(json.dumps({"body": b, "id": i})
                                                 for i, b in enumerate(body)))
    return txt + body


# --- specs and text sources -----------------------------------------------------------------------
def test_parse_source(tmp_path):
    S = sources.SourceSpec
    assert sources.parse_source("embedded") == S("embedded", "")
    assert sources.parse_source(tmp_path) == S("files", str(tmp_path))
    assert sources.parse_source("arrayrecord:/d/train-*") == S("arrayrecord", "/d/train-*")
    (tmp_path / sources.MANIFEST).write_text("{}")
    assert sources.parse_source(tmp_path).kind == "arrayrecord"  # a prepared dir is detected
    assert sources.parse_source("tfds:wiki40b/en") == S("tfds", "wiki40b/en", "train")
    assert sources.parse_source("tfds:c4:3.1.0") == S("tfds", "c4:3.1.0", "train")
    assert sources.parse_source("tfds:c4:3.1.0:validation[:5%]") == S(
        "tfds", "c4:3.1.0", "validation[:5%]")
    assert sources.parse_source("tfds:/data/set/1.0.0:test") == S("tfds", "/data/set/1.0.0",
                                                                  "test")
    with pytest.raises(data.DataError, match="tfds:NAME"):
        sources.parse_source("tfds:")


def test_jsonl_field_and_missing_field(tmp_path):
    docs = _corpus(tmp_path / "c")
    got = data.load_documents(tmp_path / "c", "all", field="body")
    assert got == docs
    with pytest.raises(data.DataError, match=r"b\.jsonl:1: expected a JSON object with a "
                                             r"'text' field .*data\.field"):
        data.load_documents(tmp_path / "c", "all")  # default field "text" is absent
    (tmp_path / "d.jsonl").write_text('{"body": "ok"}\n\n{"body": 3}\n')
    with pytest.raises(data.DataError, match=r"d\.jsonl:3: 'body' must be a string"):
        data.load_documents(tmp_path / "d.jsonl", "all", field="body")


# --- TFDS -----------------------------------------------------------------------------------------
def _build_tfds(data_dir: Path) -> None:
    """A tiny TFDS dataset built locally: no TensorFlow, no network."""
    import tensorflow_datasets as tfds

    class LladaxTinyText(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                {"text": tfds.features.Text(), "n": tfds.features.Scalar(np.int64)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(40), "test": self._generate_examples(5)}

        def _generate_examples(self, n):
            for i in range(n):
                yield i, {"text": f"tfds document {i} " + "y" * i, "n": i}

    LladaxTinyText(data_dir=str(data_dir), file_format="array_record").download_and_prepare()


def test_tfds_source(tok, tmp_path, cache_dir, monkeypatch):
    _build_tfds(tmp_path / "tfds")
    builder_dir = tmp_path / "tfds" / "lladax_tiny_text" / "1.0.0"
    by_dir = data.load_documents(f"tfds:{builder_dir}:test", "all")
    assert sorted(by_dir) == sorted(f"tfds document {i} " + "y" * i for i in range(5))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    by_name = data.load_documents("tfds:lladax_tiny_text", "all")
    assert len(by_name) == 40 and set(by_dir) < set(by_name) | set(by_dir)
    it = data.make_batches(tok, source=f"tfds:{builder_dir}", split="all", seq_len=16,
                           batch_size=2, pack=True, cache_dir=cache_dir)
    assert it.info["documents"] == 40 and next(it)["tokens"].shape == (2, 16)
    with pytest.raises(data.DataError, match=r"no feature 'body' \(features: \['n', 'text'\]\)"):
        data.load_documents(f"tfds:{builder_dir}", "all", field="body")
    with pytest.raises(data.DataError, match=r"feature 'n' is int.*not text"):
        data.load_documents(f"tfds:{builder_dir}", "all", field="n")
    with pytest.raises(data.DataError, match=r"cannot open TFDS source tfds:no_such_set:train"):
        data.load_documents("tfds:no_such_set", "all")
