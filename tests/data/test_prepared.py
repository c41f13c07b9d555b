"""Reading tokenised data: the token cache of text sources, prepared shards read back (through
`lladax.data.pipeline`, resumed), and the one-line errors for a mismatched or damaged directory."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import write_txt

from lladax.data import pipeline, prepared, prepared_writer, sources
from lladax.data.tokenizer import load_tokenizer


# --- token cache ----------------------------------------------------------------------------------
def test_token_stream_eos_and_cache(tok, tmp_path, cache_dir, monkeypatch):
    docs = write_txt(tmp_path / "a.txt", n=10)
    src = tmp_path / "a.txt"
    stream = prepared.token_stream(tok, source=src, split="all", cache_dir=cache_dir)
    assert stream.dtype == np.int32 and (stream == tok.eos_id).sum() == len(docs)
    pieces = np.split(stream, np.flatnonzero(stream == tok.eos_id) + 1)[:-1]
    assert [tok.decode(p[:-1]) for p in pieces] == docs

    def boom(*args, **kwargs):
        raise AssertionError("re-tokenised although cached")

    monkeypatch.setattr(prepared, "tokenize_corpus", boom)
    again = prepared.token_stream(tok, source=src, split="all", cache_dir=cache_dir)
    np.testing.assert_array_equal(again, stream)
    monkeypatch.undo()
    no_eos = prepared.token_stream(tok, source=src, split="all", add_eos=False, cache_dir=cache_dir)
    assert len(no_eos) == len(stream) - len(docs) and tok.eos_id not in no_eos


# --- prepared shards ------------------------------------------------------------------------------
def test_prepared_state_resumes(tok, tmp_path):
    write_txt(tmp_path / "a.txt")
    prepared_writer.prepare(tmp_path / "a.txt", tmp_path / "p", tok, shards=2, progress=False)
    for pack in (False, True):
        kwargs = dict(source=tmp_path / "p", seq_len=16, batch_size=2, seed=4, pack=pack)
        it = pipeline.make_batches(tok, **kwargs)
        for _ in range(3):
            next(it)
        state = json.loads(json.dumps(it.get_state()))
        want = [next(it)["tokens"] for _ in range(4)]
        again = pipeline.make_batches(tok, **kwargs)
        again.set_state(state)
        for w in want:
            np.testing.assert_array_equal(next(again)["tokens"], w)


def test_prepared_bad_input(tok, tmp_path, cache_dir):
    write_txt(tmp_path / "a.txt")
    out = tmp_path / "p"
    prepared_writer.prepare(tmp_path / "a.txt", out, tok, progress=False)
    other = load_tokenizer("embedded", vocab_size=600, cache_dir=cache_dir)
    with pytest.raises(
        sources.DataError,
        match=r"tokenised by .* \(vocab 512.*this run uses .*"
        r"vocab 600.*data\.tokenizer",
    ):
        pipeline.make_batches(other, source=out, seq_len=16, batch_size=2)
    shard = out / "train-00000-of-00001.array_record"
    shard.write_bytes(shard.read_bytes()[:40])  # truncated
    with pytest.raises(sources.DataError, match="damaged; re-run `lladax data prepare`"):
        pipeline.eval_batches(tok, source=out, split="train", seq_len=8, batch_size=1)
    shard.unlink()
    with pytest.raises(sources.DataError, match="missing shard.*train-00000-of-00001"):
        pipeline.make_batches(tok, source=out, seq_len=16, batch_size=2)
    (out / sources.MANIFEST).write_text("{not json")
    with pytest.raises(sources.DataError, match="manifest.json is unreadable"):
        pipeline.make_batches(tok, source=out, seq_len=16, batch_size=2)
    (out / sources.MANIFEST).unlink()
    with pytest.raises(sources.DataError, match="no manifest.json"):
        pipeline.make_batches(tok, source=f"arrayrecord:{out}", seq_len=16, batch_size=2)
    with pytest.raises(sources.DataError, match="a prepared record has 5 bytes"):
        prepared.decode_record(b"\x00" * 5)


def test_unwritable_cache_is_one_line(tok, tmp_path):
    (tmp_path / "a.txt").write_text("some text")
    (tmp_path / "cache").write_text("a file, not a directory")
    with pytest.raises(
        sources.DataError,
        match=r"cannot write the cache file .*set LLADAX_CACHE "
        "to a writable directory",
    ):
        prepared.token_stream(tok, source=tmp_path / "a.txt", cache_dir=tmp_path / "cache")
