"""Data: embedded corpus, sources, splits, grain batches and iterator resume."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import write_txt

from lladax.data import corpus, grain_datasets, pipeline, prepared, sources


# --- embedded corpus and sources ------------------------------------------------------------------
def test_embedded_documents_deterministic_and_large():
    docs = corpus.embedded_documents()
    assert len(docs) > 1000 and sum(map(len, docs)) > 1_500_000
    assert len(set(docs)) == len(docs) and all(docs)
    assert not any(" at 0x" in d for d in docs)
    code = (
        "from lladax.data import corpus, sources; "
        "print(sources.documents_digest(corpus.embedded_documents()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == sources.documents_digest(docs)


def test_splits_disjoint_and_complete():
    train = sources.load_documents("embedded", "train")
    evals = sources.load_documents("embedded", "eval")
    everything = sources.load_documents("embedded", "all")
    assert not set(train) & set(evals)
    assert len(train) + len(evals) == len(everything)
    assert 0.005 < len(evals) / len(everything) < 0.05
    with pytest.raises(ValueError, match="split"):
        sources.load_documents("embedded", "test")


def test_txt_jsonl_and_directory_sources(tmp_path):
    docs = write_txt(tmp_path / "a.txt")
    assert sources.load_documents(tmp_path / "a.txt", "all") == docs
    lines = [json.dumps({"text": f"json doc {i}\n\nwith a blank line", "id": i}) for i in range(5)]
    (tmp_path / "b.jsonl").write_text("\n".join(lines) + "\n\n")
    jdocs = sources.load_documents(str(tmp_path / "b.jsonl"), "all")
    assert jdocs == [f"json doc {i}\n\nwith a blank line" for i in range(5)]
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("nested doc")
    (tmp_path / "ignored.md").write_text("not read")
    assert sources.load_documents(tmp_path, "all") == docs + jdocs + ["nested doc"]
    everything = docs + jdocs + ["nested doc"]
    train = sources.load_documents(tmp_path, "train")
    assert train == [d for d in everything if sources.split_of(d) == "train"]
    assert len(train) > len(everything) // 2


def test_bad_sources_give_clear_errors(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError) as e:
        sources.load_documents(missing)
    assert str(missing) in str(e.value) and "embedded" in str(e.value)
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    with pytest.raises(sources.DataError, match="no documents"):
        sources.load_documents(tmp_path / "empty.txt", "all")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(sources.DataError, match=r"bad.jsonl:2: .*'text'"):
        sources.load_documents(tmp_path / "bad.jsonl", "all")
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(sources.DataError, match="unknown type"):
        sources.load_documents(tmp_path / "x.csv")
    (tmp_path / "d").mkdir()
    with pytest.raises(sources.DataError, match=r"no \.txt or \.jsonl"):
        sources.load_documents(tmp_path / "d")


# --- batching -------------------------------------------------------------------------------------
def test_batches_shape_dtype_and_vocab(tok, cache_dir):
    it = pipeline.make_batches(tok, seq_len=64, batch_size=4, seed=1, cache_dir=cache_dir)
    batches = [next(it) for _ in range(3)]
    for b in batches:
        assert set(b) == {"tokens"}
        assert b["tokens"].shape == (4, 64) and b["tokens"].dtype == np.int32
        assert b["tokens"].min() >= 0 and b["tokens"].max() < tok.vocab_size
    assert not np.array_equal(batches[0]["tokens"], batches[1]["tokens"])
    assert any((b["tokens"] == tok.eos_id).any() for b in batches)
    same = next(pipeline.make_batches(tok, seq_len=64, batch_size=4, seed=1, cache_dir=cache_dir))
    other = next(pipeline.make_batches(tok, seq_len=64, batch_size=4, seed=2, cache_dir=cache_dir))
    np.testing.assert_array_equal(same["tokens"], batches[0]["tokens"])
    assert not np.array_equal(other["tokens"], batches[0]["tokens"])


def test_iterator_state_resumes_exactly(tok, cache_dir):
    kwargs = dict(seq_len=32, batch_size=8, seed=3, cache_dir=cache_dir)
    it = pipeline.make_batches(tok, **kwargs)
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it)["tokens"] for _ in range(2)]
    fresh = pipeline.make_batches(tok, **kwargs)
    fresh.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(next(fresh)["tokens"], want)


def test_epochs_reshuffle_and_finite(tok, tmp_path, cache_dir):
    write_txt(tmp_path / "a.txt", n=40)
    kwargs = dict(source=tmp_path / "a.txt", split="all", seq_len=16, cache_dir=cache_dir)
    rows = grain_datasets.pack_rows(
        prepared.token_stream(tok, source=tmp_path / "a.txt", split="all", cache_dir=cache_dir), 16
    )
    one = list(pipeline.make_batches(tok, batch_size=1, num_epochs=1, **kwargs))
    assert len(one) == len(rows)
    assert sorted(map(bytes, (b["tokens"][0] for b in one))) == sorted(map(bytes, rows))
    two = list(pipeline.make_batches(tok, batch_size=1, num_epochs=2, **kwargs))
    first, second = (
        np.stack([b["tokens"][0] for b in half]) for half in (two[: len(rows)], two[len(rows) :])
    )
    assert not np.array_equal(first, second)  # a new permutation in epoch 2
    assert len(list(pipeline.make_batches(tok, batch_size=3, num_epochs=1, **kwargs))) == (
        len(rows) // 3
    )
    shards = [
        np.concatenate(
            [
                b["tokens"]
                for b in pipeline.make_batches(
                    tok, batch_size=1, num_epochs=1, process_index=i, process_count=3, **kwargs
                )
            ]
        )
        for i in range(3)
    ]
    assert len(shards[0]) == len(shards[1]) == len(shards[2]) == len(rows) // 3  # equal steps
    both = np.concatenate(shards)  # the hosts partition the rows (the remainder is dropped)
    assert sorted(map(bytes, both)) == sorted(map(bytes, rows[: len(rows) - len(rows) % 3]))
    with pytest.raises(sources.DataError, match="seq_len"):
        pipeline.make_batches(tok, batch_size=1, **{**kwargs, "seq_len": 10**6})


def test_eval_batches_fixed(tok, cache_dir):
    a = pipeline.eval_batches(tok, seq_len=64, batch_size=4, max_batches=3, cache_dir=cache_dir)
    b = pipeline.eval_batches(tok, seq_len=64, batch_size=4, max_batches=3, cache_dir=cache_dir)
    assert len(a) == 3
    for x, y in zip(a, b, strict=True):
        assert x["tokens"].shape == (4, 64) and x["tokens"].dtype == np.int32
        np.testing.assert_array_equal(x["tokens"], y["tokens"])
    train_rows = grain_datasets.pack_rows(
        prepared.token_stream(tok, split="train", cache_dir=cache_dir), 64
    )
    assert not {bytes(r) for r in a[0]["tokens"]} & {bytes(r) for r in train_rows[:2000]}
    everything = pipeline.eval_batches(tok, seq_len=64, batch_size=4, cache_dir=cache_dir)
    assert len(everything) >= 3
    with pytest.raises(sources.DataError, match="batch_size"):
        pipeline.eval_batches(tok, seq_len=64, batch_size=10**5, cache_dir=cache_dir)


# --- packing --------------------------------------------------------------------------------------
def _expected_segments(tok, docs: list[str], seq_len: int) -> list[bytes]:
    """Each document + EOS cut into pieces of at most seq_len, computed one document at a time."""
    out = []
    for d in docs:
        ids = np.array([*tok.encode(d), tok.eos_id], np.int32)
        out += [ids[i : i + seq_len].tobytes() for i in range(0, len(ids), seq_len)]
    return out


def _segments(batch: dict[str, np.ndarray], pad_id: int) -> list[bytes]:
    """Split packed rows back into segments, checking the segment/position invariants."""
    out = []
    for toks, seg, pos in zip(
        batch["tokens"], batch["segment_ids"], batch["positions"], strict=True
    ):
        n_seg = int(seg.max())
        assert n_seg >= 1 and (seg[seg > 0] == np.maximum.accumulate(seg)[seg > 0]).all()
        used = seg > 0
        assert used[: used.sum()].all()  # segments first, then padding
        assert (toks[~used] == pad_id).all() and (pos[~used] == 0).all()
        for s in range(1, n_seg + 1):
            where = np.flatnonzero(seg == s)
            assert (np.diff(where) == 1).all()  # contiguous
            np.testing.assert_array_equal(pos[where], np.arange(len(where)))
            out.append(toks[where].tobytes())
    return out


def test_packed_epoch_holds_every_document_once(tok, tmp_path, cache_dir, caplog):
    docs = write_txt(tmp_path / "a.txt", n=30)
    long_doc = " ".join(f"word{i}" for i in range(120))  # far longer than seq_len tokens
    (tmp_path / "b.txt").write_text(long_doc)
    docs.append(long_doc)
    seq_len = 48
    caplog.set_level("INFO", logger="lladax.data.pipeline")
    it = pipeline.make_batches(
        tok,
        source=tmp_path,
        split="all",
        seq_len=seq_len,
        batch_size=1,
        num_epochs=1,
        pack=True,
        seed=0,
        cache_dir=cache_dir,
    )
    batches = list(it)
    for b in batches:
        assert set(b) == {"tokens", "segment_ids", "positions"}
        assert all(v.shape == (1, seq_len) and v.dtype == np.int32 for v in b.values())
    got = [s for b in batches for s in _segments(b, tok.pad_id)]
    assert sorted(got) == sorted(_expected_segments(tok, docs, seq_len))
    n_long = sum(len(tok.encode(d)) + 1 > seq_len for d in docs)
    assert n_long >= 1 and it.info["documents_split"] == n_long
    assert it.info["documents"] == len(docs)
    assert f"{n_long} of {len(docs)} documents are longer than 48 tokens" in caplog.text
    fill = np.mean([(b["segment_ids"] > 0).mean() for b in batches])
    assert fill > 0.7  # first-fit packing wastes little (~20-token documents, rows of 48)


def test_packed_batches_shuffle_and_shard(tok, tmp_path, cache_dir):
    write_txt(tmp_path / "a.txt", n=50)
    kwargs = dict(
        source=tmp_path / "a.txt",
        split="all",
        seq_len=32,
        batch_size=1,
        num_epochs=1,
        pack=True,
        cache_dir=cache_dir,
    )

    def segments(**kw):
        return [
            s for b in pipeline.make_batches(tok, **kwargs, **kw) for s in _segments(b, tok.pad_id)
        ]

    a, b = segments(seed=1), segments(seed=2)
    assert a != b and sorted(a) == sorted(b)
    parts = [segments(seed=1, process_index=i, process_count=2) for i in range(2)]
    assert not set(parts[0]) & set(parts[1])
    assert len(set(parts[0]) | set(parts[1])) >= len(set(a)) - 1  # at most the remainder lost


def test_packed_state_round_trip_and_mismatch(tok, cache_dir):
    kwargs = dict(seq_len=64, batch_size=4, seed=5, pack=True, cache_dir=cache_dir)
    it = pipeline.make_batches(tok, **kwargs)
    for _ in range(5):  # part-way through a packing round (64 bins = 16 batches)
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
    want = [next(it) for _ in range(20)]  # crosses into the next packing round
    fresh = pipeline.make_batches(tok, **kwargs)
    fresh.set_state(state)
    for w in want:
        got = next(fresh)
        for k in w:
            np.testing.assert_array_equal(got[k], w[k])
    other = pipeline.make_batches(tok, **{**kwargs, "batch_size": 8})
    with pytest.raises(sources.DataError, match=r"batch_size=4 then, 8 now"):
        other.set_state(state)


def test_workers_resume_bit_exact(tok, cache_dir):
    """A worker process gives the in-process batches, and its state resumes exactly (set_state
    is served by the running worker: one process start keeps the test cheap)."""
    kwargs = dict(seq_len=64, batch_size=4, seed=2, pack=True, cache_dir=cache_dir)
    ref = pipeline.make_batches(tok, **kwargs)
    expected = [next(ref) for _ in range(6)]
    it = pipeline.make_batches(tok, workers=1, **kwargs)
    try:
        for w in expected[:3]:
            np.testing.assert_array_equal(next(it)["segment_ids"], w["segment_ids"])
        state = json.loads(json.dumps(it.get_state()))
        for w in expected[3:]:
            np.testing.assert_array_equal(next(it)["tokens"], w["tokens"])
        next(it)
        it.set_state(state)
        for w in expected[3:]:
            got = next(it)
            for k in w:
                np.testing.assert_array_equal(got[k], w[k])
    finally:
        it.close()
    with pytest.raises(sources.DataError, match="workers=1 then, 0 now"):
        pipeline.make_batches(tok, **kwargs).set_state(state)


def test_packed_logits_equal_documents_alone(tok, tmp_path, cache_dir, tiny_llada):
    """(f) A packed row's logits equal each document's logits run alone: nothing attends across
    a document boundary and RoPE positions restart."""
    from lladax.model import transformer

    short = [f"Doc {i} on topic {i % 5}." for i in range(40)]  # ~10 tokens: several per row
    (tmp_path / "a.txt").write_text("\n\n".join(short))
    cfg, params = tiny_llada  # a trained-shape LLaDA (vocab 320): ids are folded into it
    batch = next(
        pipeline.make_batches(
            tok,
            source=tmp_path / "a.txt",
            split="all",
            seq_len=64,
            batch_size=2,
            seed=0,
            pack=True,
            cache_dir=cache_dir,
        )
    )
    batch["tokens"] %= cfg.vocab_size
    assert (batch["segment_ids"].max(axis=1) >= 2).all()  # rows really hold several documents
    packed = np.asarray(
        transformer.forward(
            params,
            cfg,
            batch["tokens"],
            segment_ids=batch["segment_ids"],
            positions=batch["positions"],
        )
    )
    plain = np.asarray(transformer.forward(params, cfg, batch["tokens"]))
    docs = [
        (r, np.flatnonzero(batch["segment_ids"][r] == s))
        for r in range(2)
        for s in range(1, int(batch["segment_ids"][r].max()) + 1)
    ]
    # Each document alone at positions 0.. in its own row, right-padded with masked keys (one
    # compiled shape instead of one per length).
    alone = np.full((len(docs), 64), tok.pad_id, np.int32)
    mask = np.zeros((len(docs), 64), np.int32)
    for i, (r, where) in enumerate(docs):
        alone[i, : len(where)] = batch["tokens"][r, where]
        mask[i, : len(where)] = 1
    alone_logits = np.asarray(transformer.forward(params, cfg, alone, mask))
    for i, (r, where) in enumerate(docs):
        np.testing.assert_allclose(
            packed[r, where], alone_logits[i, : len(where)], atol=2e-5, rtol=2e-5
        )
    later = np.flatnonzero(batch["segment_ids"][0] == 2)  # unpacked, doc 2 sees doc 1
    assert np.abs(plain[0, later] - packed[0, later]).max() > 1e-3


# --- global batches -------------------------------------------------------------------------------
def test_global_batch_sharded(tok, cache_dir):
    import jax

    from lladax.model import sharding

    mesh = sharding.make_mesh(data=-1)
    sh = sharding.named_sharding(mesh, ("batch", None))
    local = next(
        pipeline.make_batches(tok, seq_len=32, batch_size=8, pack=True, cache_dir=cache_dir)
    )
    out = pipeline.global_batch(local, sh)
    assert set(out) == set(local)
    for k, v in out.items():
        assert isinstance(v, jax.Array) and v.shape == (8 * jax.process_count(), 32)
        assert v.dtype == np.int32 and v.sharding == sh
        assert len(v.addressable_shards) == 8 and v.addressable_shards[0].data.shape == (1, 32)
        np.testing.assert_array_equal(np.asarray(v), local[k])
    with pytest.raises(ValueError, match="row counts"):
        pipeline.global_batch({"tokens": local["tokens"], "positions": local["positions"][:4]}, sh)
