"""Writing prepared data: `prepare` (ArrayRecord shards + manifest, read back), its refusals
(nothing written), temp directories of killed runs, and `lladax data prepare`."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
from conftest import text_corpus, write_txt

from lladax.cli import main as cli_main
from lladax.data import pipeline, prepared, prepared_writer, sources


def _pieces(tok, docs: list[str], seq_len: int | None) -> list[bytes]:
    out = []
    for d in docs:
        ids = np.array([*tok.encode(d), tok.eos_id], np.int32)
        step = seq_len or len(ids)
        out += [ids[i : i + step].tobytes() for i in range(0, len(ids), step)]
    return out


# --- prepare --------------------------------------------------------------------------------------
def test_prepare_round_trip(tok, tmp_path, cache_dir):
    docs = text_corpus(tmp_path / "c")
    out = tmp_path / "prep"
    manifest = prepared_writer.prepare(
        tmp_path / "c", out, tok, field="body", seq_len=12, shards=3, progress=False
    )
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [sources.MANIFEST, "eval-00000-of-00001.array_record"]
        + [f"train-{i:05d}-of-00003.array_record" for i in range(3)]
    )
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left
    assert json.loads((out / sources.MANIFEST).read_text()) == manifest
    assert manifest["tokenizer"]["fingerprint"] == tok.fingerprint
    for split in ("train", "eval"):
        split_docs = [d for d in docs if sources.split_of(d) == split]
        expected = _pieces(tok, split_docs, 12)
        st = manifest["splits"][split]
        assert st["documents"] == len(split_docs) and st["records"] == len(expected)
        assert st["documents_split"] == sum(len(tok.encode(d)) + 1 > 12 for d in split_docs)
        assert st["max_len"] <= 12
        _, files = prepared.prepared_files(str(out), split)
        got = [r.tobytes() for r in prepared.read_records(files)]
        assert sorted(got) == sorted(expected)
    # The eval split is one shard in document order: the same stream as the text source's.
    np.testing.assert_array_equal(
        prepared.token_stream(tok, source=out, split="eval"),
        prepared.token_stream(
            tok, source=tmp_path / "c", split="eval", field="body", cache_dir=cache_dir
        ),
    )
    # Training reads the shards lazily, packed (pieces of <= 12 re-cut to 8) or not.
    packed = list(
        pipeline.make_batches(
            tok,
            source=f"arrayrecord:{out}",
            seq_len=8,
            batch_size=1,
            num_epochs=1,
            pack=True,
            seed=0,
        )
    )
    segs = [
        b["tokens"][0][b["segment_ids"][0] == s].tobytes()
        for b in packed
        for s in range(1, b["segment_ids"].max() + 1)
    ]
    records = [
        np.frombuffer(r, np.int32)
        for r in _pieces(tok, [d for d in docs if sources.split_of(d) == "train"], 12)
    ]
    assert sorted(segs) == sorted(
        r[i : i + 8].tobytes() for r in records for i in range(0, len(r), 8)
    )
    rows = list(pipeline.make_batches(tok, source=out, seq_len=16, batch_size=4, num_epochs=1))
    n_tokens = manifest["splits"]["train"]["tokens"]
    assert len(rows) == n_tokens // 16 // 4 and set(rows[0]) == {"tokens"}
    glob_only = pipeline.make_batches(
        tok, source=f"arrayrecord:{out}/train-00001-*", seq_len=16, batch_size=1, num_epochs=1
    )
    assert 0 < len(list(glob_only)) < n_tokens // 16


def test_prepare_refuses_and_keeps_the_old_output(tok, tmp_path):
    text_corpus(tmp_path / "c")
    out = tmp_path / "p"
    prepared_writer.prepare(tmp_path / "c", out, tok, field="body", progress=False)
    with pytest.raises(
        ValueError, match="already holds prepared data: pass a new directory, or --overwrite"
    ):
        prepared_writer.prepare(tmp_path / "c", out, tok, field="body", progress=False)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(sources.DataError, match="cannot write to .*afile.*writable --out"):
        prepared_writer.prepare(
            tmp_path / "c", tmp_path / "afile" / "sub", tok, field="body", progress=False
        )
    # A bad line part-way through: nothing is left behind, the old output stays intact.
    (tmp_path / "c" / "z.jsonl").write_text('{"body": "fine"}\n{"text": "no body"}\n')
    before = sorted(out.iterdir())
    with pytest.raises(sources.DataError, match=r"z\.jsonl:2: .*'body'"):
        prepared_writer.prepare(
            tmp_path / "c", out, tok, field="body", overwrite=True, progress=False
        )
    assert sorted(out.iterdir()) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(sources.DataError, match="has no documents"):
        prepared_writer.prepare(tmp_path / "empty.txt", tmp_path / "e", tok, progress=False)


def test_cli_prepare(tok, tmp_path, capsys, cache_dir, monkeypatch):
    monkeypatch.setenv("LLADAX_CACHE", str(cache_dir))
    text_corpus(tmp_path / "c")
    out = tmp_path / "p"
    rc = cli_main(
        [
            "data",
            "prepare",
            "--source",
            str(tmp_path / "c"),
            "--out",
            str(out),
            "--vocab-size",
            "512",
            "--field",
            "body",
            "--shards",
            "2",
            "--no-progress",
        ]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[0])
    assert summary["train"]["files"] == 2 and summary["train"]["documents"] > 0
    assert prepared.read_manifest(out)["tokenizer"]["fingerprint"] == tok.fingerprint
    rc = cli_main(
        [
            "data",
            "prepare",
            "--source",
            str(tmp_path / "missing"),
            "--out",
            str(tmp_path / "q"),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "missing does not exist" in err


# --- `lladax data prepare` refusals (issue 21): exit 2, one line, nothing on disk changed -------
def _eval_only_doc() -> str:
    """A document that `split_of` puts in eval (~2% do): found in microseconds."""
    return next(
        d for d in (f"eval doc {i}" for i in range(10_000)) if sources.split_of(d) == "eval"
    )


@pytest.fixture
def scene(tmp_path, tok, cache_dir, monkeypatch) -> Path:
    """tmp_path holding: src/ (a small corpus), home/ (a user's files), own/ (prepared data)."""
    monkeypatch.setenv("LLADAX_CACHE", str(cache_dir))
    (tmp_path / "src").mkdir()
    write_txt(tmp_path / "src" / "a.txt", n=20)
    (tmp_path / "body.jsonl").write_text('{"body": "x"}\n')
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "thesis.tex").write_text("years of work")
    prepared_writer.prepare(tmp_path / "src", tmp_path / "own", tok, progress=False)
    (tmp_path / "bin.txt").write_bytes(b"GIF89a\xff\x00\x01")
    (tmp_path / "nul.txt").write_bytes(b"text, then\x00")
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "list.jsonl").write_text('["not", "an", "object"]\n')
    (tmp_path / "eval_only.txt").write_text(_eval_only_doc())
    (tmp_path / "own" / "notes.txt").write_text("a source inside the output")
    (tmp_path / "own" / "tok.model").write_bytes(tok._sp.serialized_model_proto())
    (tmp_path / "afile").write_text("x")
    return tmp_path


PREPARE_REFUSALS = [
    # item 4: --overwrite never deletes what prepare did not write; source and --out apart
    (
        ["--source", "src", "--out", "home", "--overwrite"],
        "home is not empty and is not prepared data written by lladax (no manifest.json)",
    ),
    (
        ["--source", "src", "--out", "own"],
        "already holds prepared data: pass a new directory, or --overwrite",
    ),
    (["--source", "src", "--out", "afile"], "afile is a file, not a directory"),
    (["--source", "src", "--out", "afile/sub"], "(not a directory): choose a writable --out"),
    (["--source", "src", "--out", "src/out"], "overlap (the same directory, or one inside"),
    (["--source", "src", "--out", "src"], "is not empty and is not prepared data"),
    (["--source", "own/notes.txt", "--out", "own", "--overwrite"], "overlap"),
    (
        ["--source", "src", "--out", "own", "--overwrite", "--tokenizer", "own/tok.model"],
        "tok.model lies inside --out",
    ),
    # item 9: binary text sources
    (["--source", "bin.txt", "--out", "o"], "bin.txt: byte 6 is not valid UTF-8"),
    (["--source", "nul.txt", "--out", "o"], "nul.txt: byte 10 is a NUL byte"),
    # item 13 and the sweep: every argument, before the tokenizer loads
    (["--source", "missing", "--out", "o"], "missing does not exist"),
    (["--source", "src", "--out", "o", "--shards", "0"], "--shards must be between 1 and"),
    (["--source", "src", "--out", "o", "--shards", "100000000"], "--shards must be between 1"),
    (["--source", "src", "--out", "o", "--seq-len", "1"], "--seq-len must be at least 2"),
    (["--source", "src", "--out", "o", "--seq-len", "-5"], "--seq-len must be at least 2"),
    (["--source", "src", "--out", "o", "--vocab-size", "0"], "vocab_size=0 is too small"),
    (
        ["--source", "src", "--out", "o", "--tokenizer", "own/tok.model", "--vocab-size", "512"],
        "--vocab-size only sizes the 'embedded' tokenizer",
    ),
    (["--source", "src", "--out", "o", "--tokenizer", "nope.model"], "tokenizer path"),
    (
        ["--source", "src", "--out", "o", "--tokenizer", "home"],
        "holds neither tokenizer.json nor tokenizer.model",
    ),
    (["--source", "src", "--out", "o", "--tokenizer", "afile"], "cannot tell the tokenizer type"),
    (
        ["--source", "body.jsonl", "--out", "o"],
        "body.jsonl:1: expected a JSON object with a 'text' field (it has ['body'])",
    ),
    (
        ["--source", "list.jsonl", "--out", "o"],
        "list.jsonl:1: expected a JSON object with a 'text' field, got a JSON array",
    ),
    (["--source", "empty.txt", "--out", "o"], "has no documents"),
    (["--source", "own", "--out", "o"], "is prepared (tokenised) data, not text"),
    (["--source", "synthetic:all", "--out", "o"], "is a chat (SFT) source"),
    # refused after reading: the temp directory and the parents it made are gone again
    (["--source", "eval_only.txt", "--out", "new/deeper/o"], "none in the train split"),
]


@pytest.mark.parametrize(("args", "words"), PREPARE_REFUSALS)
def test_prepare_refusals(scene, cli_error, monkeypatch, args, words):
    monkeypatch.chdir(scene)
    # The session's cached 512-token tokenizer: nothing trains in these tests.
    vocab = [] if "--vocab-size" in args or "--tokenizer" in args else ["--vocab-size", "512"]
    line = cli_error(["data", "prepare", *args, *vocab, "--no-progress"], code=2, untouched=[scene])
    assert line.startswith("lladax data: error: ") and words in line, line


def test_prepare_eval_warning_and_stale_temp_dirs(scene, cli_error, capsys, monkeypatch):
    """A corpus without eval documents is written with a warning; the temp directories of a
    killed prepare of the same --out (dead pid) are swept, a live process's are kept."""
    monkeypatch.chdir(scene)
    host = socket.gethostname()
    dead = scene / f".o.tmp-{host}-99999999-abc"
    live = scene / f".o.tmp-{host}-{os.getppid()}-abc"
    for d in (dead, live):
        d.mkdir()
    (scene / "train_only.txt").write_text("one train document")
    assert sources.split_of("one train document") == "train"
    assert (
        cli_main(
            [
                "data",
                "prepare",
                "--source",
                "train_only.txt",
                "--out",
                "o",
                "--vocab-size",
                "512",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "warning: train_only.txt gave no eval documents" in capsys.readouterr().err
    assert not dead.exists() and live.exists()
