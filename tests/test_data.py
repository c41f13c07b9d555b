"""Data: embedded corpus, sources, splits, token cache, grain batches and iterator resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lladax import data
from lladax import tokenizer as T


@pytest.fixture(scope="module")
def tok(cache_dir) -> T.SentencePieceTokenizer:
    return T.default_tokenizer(512, cache_dir=cache_dir)


def _write_txt(path: Path, n: int = 60) -> list[str]:
    docs = [f"Document number {i}.\nIt has two lines about topic {i % 7}." for i in range(n)]
    path.write_text("\n\n".join(docs) + "\n\n\n")
    return docs


# --- embedded corpus and sources ------------------------------------------------------------------
def test_embedded_documents_deterministic_and_large():
    docs = data.embedded_documents()
    assert len(docs) > 1000 and sum(map(len, docs)) > 1_500_000
    assert len(set(docs)) == len(docs) and all(docs)
    assert not any(" at 0x" in d for d in docs)
    code = "from lladax import data; print(data.documents_digest(data.embedded_documents()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == data.documents_digest(docs)


def test_splits_disjoint_and_complete():
    train = data.load_documents("embedded", "train")
    evals = data.load_documents("embedded", "eval")
    everything = data.load_documents("embedded", "all")
    assert not set(train) & set(evals)
    assert len(train) + len(evals) == len(everything)
    assert 0.005 < len(evals) / len(everything) < 0.05
    with pytest.raises(ValueError, match="split"):
        data.load_documents("embedded", "test")


def test_txt_jsonl_and_directory_sources(tmp_path):
    docs = _write_txt(tmp_path / "a.txt")
    assert data.load_documents(tmp_path / "a.txt", "all") == docs
    lines = [json.dumps({"text": f"json doc {i}\n\nwith a blank line", "id": i}) for i in range(5)]
    (tmp_path / "b.jsonl").write_text("\n".join(lines) + "\n\n")
    jdocs = data.load_documents(str(tmp_path / "b.jsonl"), "all")
    assert jdocs == [f"json doc {i}\n\nwith a blank line" for i in range(5)]
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("nested doc")
    (tmp_path / "ignored.md").write_text("not read")
    assert data.load_documents(tmp_path, "all") == docs + jdocs + ["nested doc"]
    everything = docs + jdocs + ["nested doc"]
    train = data.load_documents(tmp_path, "train")
    assert train == [d for d in everything if data.split_of(d) == "train"]
    assert len(train) > len(everything) // 2


def test_bad_sources_give_clear_errors(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError) as e:
        data.load_documents(missing)
    assert str(missing) in str(e.value) and "embedded" in str(e.value)
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    with pytest.raises(data.DataError, match="no documents"):
        data.load_documents(tmp_path / "empty.txt", "all")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(data.DataError, match=r"bad.jsonl:2: .*'text'"):
        data.load_documents(tmp_path / "bad.jsonl", "all")
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(data.DataError, match="unknown type"):
        data.load_documents(tmp_path / "x.csv")
    (tmp_path / "d").mkdir()
    with pytest.raises(data.DataError, match=r"no \.txt or \.jsonl"):
        data.load_documents(tmp_path / "d")


# --- tokenising and batching ----------------------------------------------------------------------
def test_token_stream_eos_and_cache(tok, tmp_path, cache_dir, monkeypatch):
    docs = _write_txt(tmp_path / "a.txt", n=10)
    stream = data.token_stream(tok, source=tmp_path / "a.txt", split="all", cache_dir=cache_dir)
    assert stream.dtype == np.int32 and (stream == tok.eos_id).sum() == len(docs)
    pieces = np.split(stream, np.flatnonzero(stream == tok.eos_id) + 1)[:-1]
    assert [tok.decode(p[:-1]) for p in pieces] == docs

    def boom(*args, **kwargs):
        raise AssertionError("re-tokenised although cached")

    monkeypatch.setattr(data, "tokenize_documents", boom)
    again = data.token_stream(tok, source=tmp_path / "a.txt", split="all", cache_dir=cache_dir)
    np.testing.assert_array_equal(again, stream)
    monkeypatch.undo()
    no_eos = data.token_stream(tok, source=tmp_path / "a.txt", split="all", add_eos=False,
                               cache_dir=cache_dir)
    assert len(no_eos) == len(stream) - len(docs) and tok.eos_id not in no_eos


def test_batches_shape_dtype_and_vocab(tok, cache_dir):
    it = data.make_batches(tok, seq_len=64, batch_size=4, seed=1, cache_dir=cache_dir)
    batches = [next(it) for _ in range(3)]
    for b in batches:
        assert set(b) == {"tokens"}
        assert b["tokens"].shape == (4, 64) and b["tokens"].dtype == np.int32
        assert b["tokens"].min() >= 0 and b["tokens"].max() < tok.vocab_size
    assert not np.array_equal(batches[0]["tokens"], batches[1]["tokens"])
    assert any((b["tokens"] == tok.eos_id).any() for b in batches)
    same = next(data.make_batches(tok, seq_len=64, batch_size=4, seed=1, cache_dir=cache_dir))
    other = next(data.make_batches(tok, seq_len=64, batch_size=4, seed=2, cache_dir=cache_dir))
    np.testing.assert_array_equal(same["tokens"], batches[0]["tokens"])
    assert not np.array_equal(other["tokens"], batches[0]["tokens"])


def test_iterator_state_resumes_exactly(tok, cache_dir):
    kwargs = dict(seq_len=32, batch_size=8, seed=3, cache_dir=cache_dir)
    it = data.make_batches(tok, **kwargs)
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it)["tokens"] for _ in range(2)]
    fresh = data.make_batches(tok, **kwargs)
    fresh.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(next(fresh)["tokens"], want)


def test_epochs_reshuffle_and_finite(tok, tmp_path, cache_dir):
    _write_txt(tmp_path / "a.txt", n=40)
    kwargs = dict(source=tmp_path / "a.txt", split="all", seq_len=16, cache_dir=cache_dir)
    rows = data.pack_rows(data.token_stream(tok, source=tmp_path / "a.txt", split="all",
                                            cache_dir=cache_dir), 16)
    one = list(data.make_batches(tok, batch_size=1, num_epochs=1, **kwargs))
    assert len(one) == len(rows)
    assert sorted(map(bytes, (b["tokens"][0] for b in one))) == sorted(map(bytes, rows))
    two = list(data.make_batches(tok, batch_size=1, num_epochs=2, **kwargs))
    first, second = (np.stack([b["tokens"][0] for b in half])
                     for half in (two[:len(rows)], two[len(rows):]))
    assert not np.array_equal(first, second)  # a new permutation in epoch 2
    assert len(list(data.make_batches(tok, batch_size=3, num_epochs=1, **kwargs))) == (
        len(rows) // 3)
    shards = [np.concatenate([b["tokens"] for b in data.make_batches(
        tok, batch_size=1, num_epochs=1, process_index=i, process_count=2, **kwargs)])
        for i in range(2)]
    assert abs(len(shards[0]) - len(shards[1])) <= 1
    both = np.concatenate(shards)  # the two hosts partition the rows
    assert sorted(map(bytes, both)) == sorted(map(bytes, rows))
    with pytest.raises(data.DataError, match="seq_len"):
        data.make_batches(tok, batch_size=1, **{**kwargs, "seq_len": 10**6})


def test_eval_batches_fixed(tok, cache_dir):
    a = data.eval_batches(tok, seq_len=64, batch_size=4, max_batches=3, cache_dir=cache_dir)
    b = data.eval_batches(tok, seq_len=64, batch_size=4, max_batches=3, cache_dir=cache_dir)
    assert len(a) == 3
    for x, y in zip(a, b, strict=True):
        assert x["tokens"].shape == (4, 64) and x["tokens"].dtype == np.int32
        np.testing.assert_array_equal(x["tokens"], y["tokens"])
    train_rows = data.pack_rows(data.token_stream(tok, split="train", cache_dir=cache_dir), 64)
    assert not {bytes(r) for r in a[0]["tokens"]} & {bytes(r) for r in train_rows[:2000]}
    everything = data.eval_batches(tok, seq_len=64, batch_size=4, cache_dir=cache_dir)
    assert len(everything) >= 3
    with pytest.raises(data.DataError, match="batch_size"):
        data.eval_batches(tok, seq_len=64, batch_size=10**5, cache_dir=cache_dir)
