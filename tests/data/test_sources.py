"""Source specs (a prepared directory is recognised), TFDS sources, the fast `check_source`."""

from __future__ import annotations

import codecs
import json
import re
from pathlib import Path

import numpy as np
import pytest

from lladax.data import pipeline, preflight, sources, textio


# --- specs ----------------------------------------------------------------------------------------
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
        "tfds", "c4:3.1.0", "validation[:5%]"
    )
    assert sources.parse_source("tfds:/data/set/1.0.0:test") == S("tfds", "/data/set/1.0.0", "test")
    with pytest.raises(sources.DataError, match="tfds:NAME"):
        sources.parse_source("tfds:")


# --- TFDS -----------------------------------------------------------------------------------------
def _build_tfds(data_dir: Path) -> None:
    """A tiny TFDS dataset built locally: no TensorFlow, no network."""
    import tensorflow_datasets as tfds

    class LladaxTinyText(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {"text": tfds.features.Text(), "n": tfds.features.Scalar(np.int64)}
                ),
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(40), "test": self._generate_examples(5)}

        def _generate_examples(self, n):
            for i in range(n):
                yield i, {"text": f"tfds document {i} " + "y" * i, "n": i}

    LladaxTinyText(data_dir=str(data_dir), file_format="array_record").download_and_prepare()


def test_tfds_source(tok, tmp_path, cache_dir, monkeypatch):
    _build_tfds(tmp_path / "tfds")
    builder_dir = tmp_path / "tfds" / "lladax_tiny_text" / "1.0.0"
    by_dir = sources.load_documents(f"tfds:{builder_dir}:test", "all")
    assert sorted(by_dir) == sorted(f"tfds document {i} " + "y" * i for i in range(5))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    by_name = sources.load_documents("tfds:lladax_tiny_text", "all")
    assert len(by_name) == 40 and set(by_dir) < set(by_name) | set(by_dir)
    it = pipeline.make_batches(
        tok,
        source=f"tfds:{builder_dir}",
        split="all",
        seq_len=16,
        batch_size=2,
        pack=True,
        cache_dir=cache_dir,
    )
    assert it.info["documents"] == 40 and next(it)["tokens"].shape == (2, 16)
    with pytest.raises(sources.DataError, match=r"no feature 'body' \(features: \['n', 'text'\]\)"):
        sources.load_documents(f"tfds:{builder_dir}", "all", field="body")
    with pytest.raises(sources.DataError, match=r"feature 'n' is int.*not text"):
        sources.load_documents(f"tfds:{builder_dir}", "all", field="n")
    with pytest.raises(sources.DataError, match=r"cannot open TFDS source tfds:no_such_set:train"):
        sources.load_documents("tfds:no_such_set", "all")
    # check_source finds what tfds finds (by name or builder directory), and its splits.
    preflight.check_source("tfds:lladax_tiny_text:test[:50%]")
    preflight.check_source(f"tfds:{builder_dir}:train+test")
    with pytest.raises(sources.DataError, match=r"has no split 'validation' \(it has \['train', "):
        preflight.check_source("tfds:lladax_tiny_text:validation")
    with pytest.raises(sources.DataError, match=r"cannot open TFDS source tfds:no_such_set:train"):
        preflight.check_source("tfds:no_such_set")


# --- check_source: the fast pre-flight check (issue 21) -------------------------------------------
def _good_chat() -> str:
    return (
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello"},
                ]
            }
        )
        + "\n"
    )


def _prepared_dir(d: Path, files: list[str], manifest: dict | None = None) -> Path:
    """A prepared directory by hand (manifest + empty shard files): no tokenizer needed."""
    d.mkdir()
    split = {"documents": 1, "documents_split": 0, "records": 1, "tokens": 3, "max_len": 3}
    m = manifest or {
        "format": "lladax-tokens-v1",
        "seq_len": None,
        "tokenizer": {"name": "t", "fingerprint": "f", "vocab_size": 512},
        "splits": {"train": {**split, "files": files}, "eval": {**split, "files": []}},
    }
    (d / sources.MANIFEST).write_text(json.dumps(m))
    for f in files:
        if "/" not in f:
            (d / f).write_bytes(b"")
    return d


# (name of the source under tmp_path, files to write there {relative path: bytes}, kwargs,
#  words the one-line DataError must hold)
BAD_SOURCES = [
    ("", {}, {}, "data.source is empty"),
    ("nope.txt", {}, {}, "nope.txt does not exist"),
    ("c", {"c/readme.md": b"x"}, {}, "holds no .txt or .jsonl files"),
    ("a.csv", {"a.csv": b"x"}, {}, "unknown type: use a .txt or .jsonl"),
    (
        "a.txt",
        {"a.txt": b"\x89PNG\r\n\x1a\n" + bytes(range(256))},
        {},
        "a.txt: byte 0 is not valid UTF-8",
    ),
    ("a.txt", {"a.txt": b"fine text\n\nthen\x00binary"}, {}, "a.txt: byte 15 is a NUL byte"),
    ("c", {"c/a.txt": b"ok", "c/b.txt": b"ok\xc3\x28"}, {}, "b.txt: byte 2 is not valid UTF-8"),
    ("e.txt", {"e.txt": b"\n \n"}, {}, "has no documents (its files are empty): add text"),
    (
        "a.jsonl",
        {"a.jsonl": b'\n["a list"]\n'},
        {},
        "a.jsonl:2: expected a JSON object with a 'text' field, got a JSON array",
    ),
    (
        "a.jsonl",
        {"a.jsonl": b'{"body": "x"}\n'},
        {},
        "a.jsonl:1: expected a JSON object with a 'text' field (it has ['body'])",
    ),
    ("a.jsonl", {"a.jsonl": b'{"text": 3}\n'}, {}, "'text' must be a string, got a JSON number"),
    ("a.jsonl", {"a.jsonl": b'{"text": "x"\n'}, {}, "a.jsonl:1: expected a JSON object"),
    ("a.jsonl", {"a.jsonl": b'{"text": "x"}\n'}, {"field": ""}, "data.field is empty"),
    ("arrayrecord:{tmp}/none-*", {}, {}, "matches no files: check the pattern"),
    ("synthetic:all", {}, {}, "is a chat (SFT) source: set data.format='chat'"),
    (
        "tfds:no_such_set",
        {},
        {},
        "cannot open TFDS source tfds:no_such_set:train (no prepared dataset under",
    ),
    ("tfds:{tmp}/gone/1.0.0", {}, {}, "TFDS builder directory"),
    ("embedded", {}, {"fmt": "yaml"}, "data.format='yaml' is unknown"),
    # chat sources: the file exists and its first record is a dialogue
    ("chat.jsonl", {}, {"fmt": "chat"}, "SFT data"),
    ("chat.txt", {"chat.txt": b"hi"}, {"fmt": "chat"}, "expected a chat .jsonl file"),
    (
        "c.jsonl",
        {"c.jsonl": b'{"text": "x"}\n'},
        {"fmt": "chat"},
        "c.jsonl:1: expected a JSON object with a 'messages' list (it has ['text'])",
    ),
    (
        "c.jsonl",
        {"c.jsonl": b'{"messages": [{"role": "bot", "content": "x"}]}\n'},
        {"fmt": "chat"},
        "c.jsonl:1: unknown role 'bot'",
    ),
    (
        "c.jsonl",
        {"c.jsonl": b'{"messages": [{"role": "user", "content": "x"}]}\n'},
        {"fmt": "chat"},
        "no assistant turn",
    ),
    ("c.jsonl", {"c.jsonl": b"\xff\xfe{}\n"}, {"fmt": "chat"}, "c.jsonl: byte 0 is not valid"),
    ("synthetic:nope", {}, {"fmt": "chat"}, "unknown synthetic task(s) ['nope']"),
    ("", {}, {"fmt": "chat"}, "data.source is empty"),
]


@pytest.mark.parametrize(("source", "files", "kwargs", "words"), BAD_SOURCES)
def test_check_source_refuses(tmp_path, monkeypatch, source, files, kwargs, words):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    for rel, payload in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(payload)
    spec = source.replace("{tmp}", str(tmp_path))
    if spec and ":" not in spec and spec != "embedded":
        spec = str(tmp_path / spec)
    with pytest.raises(sources.DataError) as e:
        preflight.check_source(spec, **kwargs)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_check_source_prepared_dirs(tmp_path):
    good = _prepared_dir(tmp_path / "ok", ["train-00000-of-00001.array_record"])
    preflight.check_source(str(good))
    preflight.check_source(f"arrayrecord:{good}/train-*")
    missing = _prepared_dir(
        tmp_path / "miss",
        ["train-00000-of-00001.array_record", "train-00001-of-00002.array_record"],
    )
    (missing / "train-00001-of-00002.array_record").unlink()
    hostile = _prepared_dir(tmp_path / "hostile", ["../../etc/passwd.array_record"])
    broken = _prepared_dir(tmp_path / "broken", [])
    (broken / sources.MANIFEST).write_text("{not json")
    for d, words in [
        (missing, "missing shard(s) ['train-00001-of-00002.array_record']"),
        (hostile, "is damaged (shard name '../../etc/passwd.array_record' is not"),
        (broken, "manifest.json is unreadable"),
    ]:
        with pytest.raises(sources.DataError, match=re.escape(words)):
            preflight.check_source(str(d))


def test_check_source_accepts_and_reads_only_the_head(tmp_path):
    for ok in ("embedded",):
        preflight.check_source(ok)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.txt").write_bytes(codecs.BOM_UTF8 + "héllo\n\nworld".encode())
    # Only the first record is checked (a fast check): line 2 fails later, in the reader.
    (tmp_path / "c" / "b.jsonl").write_text('{"text": "fine"}\n{"body": "late"}\n')
    preflight.check_source(str(tmp_path / "c"))
    with pytest.raises(sources.DataError, match=r"b\.jsonl:2: expected a JSON object"):
        sources.load_documents(tmp_path / "c", "all")
    (tmp_path / "chat.jsonl").write_text(_good_chat())
    preflight.check_source(str(tmp_path / "chat.jsonl"), fmt="chat")
    preflight.check_source("synthetic:copy,reverse", fmt="chat")
    # A binary tail beyond the head passes the check; the reader names its byte offset.
    big = tmp_path / "big.txt"
    big.write_bytes(b"word " * (textio.HEAD_BYTES // 5 + 10) + b"\xff")
    preflight.check_source(str(big))
    with pytest.raises(
        sources.DataError,
        match=rf"big\.txt: byte {big.stat().st_size - 1} is "
        "not valid UTF-8",
    ):
        sources.load_documents(big, "all")
