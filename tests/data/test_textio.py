"""Strict reading of text files: jsonl fields, UTF-8 only (binary input names its byte offset)."""

from __future__ import annotations

import codecs

import pytest
from conftest import text_corpus

from lladax.data import sources


def test_jsonl_field_and_missing_field(tmp_path):
    docs = text_corpus(tmp_path / "c")
    got = sources.load_documents(tmp_path / "c", "all", field="body")
    assert got == docs
    with pytest.raises(
        sources.DataError,
        match=r"b\.jsonl:1: expected a JSON object with a "
        r"'text' field .*data\.field",
    ):
        sources.load_documents(tmp_path / "c", "all")  # default field "text" is absent
    (tmp_path / "d.jsonl").write_text('{"body": "ok"}\n\n{"body": 3}\n')
    with pytest.raises(sources.DataError, match=r"d\.jsonl:3: 'body' must be a string"):
        sources.load_documents(tmp_path / "d.jsonl", "all", field="body")


def test_readers_refuse_binary_and_name_the_place(tmp_path):
    """Issue 21 item 9: no more errors='replace': the byte offset and the fix, one line."""
    j = tmp_path / "x.jsonl"
    j.write_bytes(b'{"text": "a"}\n{"text": "b"}\n{"text": "\xe9t\xe9"}\n')
    with pytest.raises(
        sources.DataError,
        match=r"x\.jsonl:3: byte 38 is not valid UTF-8.*"
        r"convert it to UTF-8",
    ):
        sources.load_documents(j, "all")
    (tmp_path / "bom.jsonl").write_bytes(codecs.BOM_UTF8 + b'{"text": "bom ok"}\n')
    assert sources.load_documents(tmp_path / "bom.jsonl", "all") == ["bom ok"]
    with pytest.raises(
        sources.DataError,
        match=r"tfds:d:train\[7\] feature 'text': byte 1 is "
        "not valid UTF-8",
    ):
        sources._tfds_text({"text": b"a\xff"}, "text", "tfds:d:train[7]")
