"""Tokenised corpora: token ids of a source split, the token cache, prepared ArrayRecord shards.

`corpus_tokens` gives a split as one int32 stream plus document offsets: a text source
(`lladax.sources`) is tokenised once (EOS after each document) and cached under the cache
directory; a prepared directory is read from its shards. `prepare` (``lladax data prepare``)
streams a text source through the tokenizer into ArrayRecord shards, one file set per split,
with a manifest naming the tokenizer (`PreparedWriter`). Records are raw little-endian int32
token ids, EOS included; readers refuse shards of another tokenizer (`check_prepared`).
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lladax import sources
from lladax.sources import EMBEDDED, MANIFEST, DataError, atomic_write_bytes, check_split

if TYPE_CHECKING:
    from lladax.tokenizer import Tokenizer

PREPARED_FORMAT = "lladax-tokens-v1"
RECORD_DTYPE = np.dtype("<i4")  # records are raw little-endian int32 token ids


# --- tokenise -----------------------------------------------------------------------------------
def tokenize_corpus(tokenizer: Tokenizer, documents: Sequence[str], *, add_eos: bool = True
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Documents -> (stream int32 ``[n_tokens]``, starts int64 ``[n_docs + 1]``): document ``i``
    is ``stream[starts[i]:starts[i + 1]]``, EOS last if ``add_eos``."""
    encoded = tokenizer.encode_batch(list(documents))
    eos = [tokenizer.eos_id] if add_eos else []
    starts = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum([len(ids) + len(eos) for ids in encoded], out=starts[1:])
    stream = np.empty(int(starts[-1]), np.int32)
    for i, ids in enumerate(encoded):
        stream[starts[i]:starts[i + 1]] = ids + eos
    return stream, starts


def tokenize_documents(tokenizer: Tokenizer, documents: Sequence[str], *,
                       add_eos: bool = True) -> np.ndarray:
    """Documents -> one int32 stream ``[n_tokens]``, EOS after each document if ``add_eos``."""
    return tokenize_corpus(tokenizer, documents, add_eos=add_eos)[0]


def corpus_tokens(tokenizer: Tokenizer, *, source: str | Path = EMBEDDED, split: str = "train",
                  field: str = "text", add_eos: bool = True,
                  cache_dir: str | Path | None = None, use_cache: bool = True
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(stream, starts) of a split (see `tokenize_corpus`). Text sources are cached at
    ``<cache>/tokens/<tokenizer>_<source>_<split>_<eos>.npz``; prepared shards are read."""
    check_split(split)
    spec = sources.parse_source(source)
    if spec.tokenized:
        manifest, files = prepared_files(spec.location, split)
        check_prepared(manifest, tokenizer, str(source))
        records = read_records(files)
        starts = np.zeros(len(records) + 1, np.int64)
        np.cumsum([len(r) for r in records], out=starts[1:])
        return np.concatenate(records or [np.zeros(0, np.int32)]), starts
    if spec.kind == "files":
        sources.text_files(spec.location)  # a missing path raises its error before hashing
    key = (f"{tokenizer.fingerprint}_{sources.source_fingerprint(source, field)}_{split}_"
           f"{'eos' if add_eos else 'noeos'}")
    path = sources.cache_root(cache_dir) / "tokens" / f"{key}.npz"
    if use_cache and path.is_file():
        try:
            with np.load(path) as f:
                return f["stream"], f["starts"]
        except (OSError, ValueError, KeyError):
            pass  # a corrupt cache file: rebuild it
    stream, starts = tokenize_corpus(tokenizer, sources.load_documents(source, split, field),
                                     add_eos=add_eos)
    if use_cache:
        buf = io.BytesIO()
        np.savez(buf, stream=stream, starts=starts)
        atomic_write_bytes(path, buf.getvalue())
    return stream, starts


def token_stream(tokenizer: Tokenizer, *, source: str | Path = EMBEDDED, split: str = "train",
                 add_eos: bool = True, cache_dir: str | Path | None = None,
                 use_cache: bool = True, field: str = "text") -> np.ndarray:
    """The tokenised split as one int32 stream ``[n_tokens]`` (cached, see `corpus_tokens`)."""
    return corpus_tokens(tokenizer, source=source, split=split, field=field, add_eos=add_eos,
                         cache_dir=cache_dir, use_cache=use_cache)[0]


# --- reading prepared shards --------------------------------------------------------------------
def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.array_record"


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of a prepared directory (raises `DataError` naming the problem and the fix)."""
    path = Path(directory).expanduser() / MANIFEST
    if not path.is_file():
        raise DataError(f"{path.parent} has no {MANIFEST}: it is not (or not completely) written "
                        "by `lladax data prepare`; re-run prepare")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is unreadable ({type(e).__name__}: {e}): re-run "
                        "`lladax data prepare`") from None
    if not isinstance(manifest, dict) or manifest.get("format") != PREPARED_FORMAT:
        raise DataError(f"{path} is not a {PREPARED_FORMAT} manifest: re-run "
                        "`lladax data prepare` with this version of lladax")
    return manifest


def prepared_files(location: str, split: str) -> tuple[dict[str, Any], list[Path]]:
    """(manifest, shard files of ``split``) for a prepared directory or a glob of its shards."""
    check_split(split)
    p = Path(location).expanduser()
    if glob.has_magic(location):
        matched = sorted(Path(f) for f in glob.glob(str(p)))
        if not matched:
            raise DataError(f"arrayrecord:{location} matches no files: check the pattern")
        parents = {f.parent for f in matched}
        if len(parents) > 1:
            raise DataError(f"arrayrecord:{location} spans {len(parents)} directories: use "
                            "shards of one prepared directory")
        directory = parents.pop()
    else:
        if not p.exists():
            raise FileNotFoundError(f"prepared data {p} does not exist: write it with "
                                    "`lladax data prepare --source ... --out DIR`")
        directory, matched = (p, None) if p.is_dir() else (p.parent, [p])
    manifest = read_manifest(directory)
    wanted = ["train", "eval"] if split == "all" else [split]
    files = [directory / name for s in wanted for name in manifest["splits"][s]["files"]]
    if matched is not None:
        files = [f for f in files if f in set(matched)]
    if not files:
        raise DataError(f"prepared data {location} has no {split!r} shards (it holds "
                        f"{ {s: v['records'] for s, v in manifest['splits'].items()} } records)")
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise DataError(f"prepared data {directory} is missing shard(s) {missing[:3]}: the copy "
                        "is incomplete; copy it again or re-run `lladax data prepare`")
    return manifest, files


def check_prepared(manifest: dict[str, Any], tokenizer: Tokenizer, where: str) -> None:
    """Refuse shards tokenised by a different tokenizer than the one the run uses."""
    t = manifest["tokenizer"]
    if t["fingerprint"] != tokenizer.fingerprint or t["vocab_size"] != tokenizer.vocab_size:
        raise DataError(
            f"prepared data {where} was tokenised by {t['name']} (vocab {t['vocab_size']}, "
            f"fingerprint {t['fingerprint']}) but this run uses {tokenizer.name} (vocab "
            f"{tokenizer.vocab_size}, fingerprint {tokenizer.fingerprint}): set data.tokenizer "
            "to the tokenizer it was prepared with, or re-run `lladax data prepare --tokenizer`")


def decode_record(record: bytes) -> np.ndarray:
    """One stored record -> token ids ``[n]`` int32."""
    if len(record) % RECORD_DTYPE.itemsize:
        raise DataError(f"a prepared record has {len(record)} bytes, not a whole number of int32 "
                        "ids: the shard is corrupt; re-run `lladax data prepare`")
    return np.frombuffer(record, RECORD_DTYPE).astype(np.int32)


def record_source(files: Sequence[Path]) -> Any:
    """A grain random-access source over the records of ``files``."""
    import grain

    try:
        return grain.sources.ArrayRecordDataSource([str(f) for f in files])
    except Exception as e:  # array_record raises RuntimeError / ValueError on a damaged file
        raise DataError(f"cannot read prepared shards {[f.name for f in files][:3]} "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}): "
                        "they are damaged; re-run `lladax data prepare`") from None


def read_records(files: Sequence[Path]) -> list[np.ndarray]:
    """Every record of ``files`` in order (small splits such as eval)."""
    source = record_source(files)
    try:
        return [decode_record(source[i]) for i in range(len(source))]
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"cannot read prepared shards {[f.name for f in files][:3]} "
                        f"({type(e).__name__}): they are damaged; re-run `lladax data prepare`"
                        ) from None


# --- writing prepared shards --------------------------------------------------------------------
class PreparedWriter:
    """Writes token records into per-split ArrayRecord shards of a prepared directory.

    Everything goes to a hidden temp directory beside ``out``; `commit` writes the manifest and
    renames the directory into place, so a reader never sees a half-written ``out`` (an
    interrupted prepare leaves only the temp directory, removed by `abort`). The train split is
    spread over ``shards`` files (documents round-robin, so shards are even), eval over one.
    """

    def __init__(self, out: str | Path, *, shards: int, overwrite: bool = False) -> None:
        from array_record.python.array_record_module import ArrayRecordWriter

        if shards < 1:
            raise ValueError(f"--shards must be >= 1, got {shards}")
        self.out = Path(out).expanduser()
        if self.out.exists() and not self.out.is_dir():
            raise DataError(f"--out {self.out} is a file: pass a directory path")
        if self.out.is_dir() and any(self.out.iterdir()) and not overwrite:
            raise DataError(f"--out {self.out} is not empty: pass a new directory or --overwrite")
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(dir=self.out.parent, prefix=f".{self.out.name}.tmp-"))
        except OSError as e:
            raise DataError(f"cannot write to {self.out.parent} ({e.strerror}): choose a "
                            "writable --out") from None
        self.counts = {"train": shards, "eval": 1}
        self._writers = {(s, i): ArrayRecordWriter(str(self.tmp / shard_name(s, i, n)),
                                                   "group_size:1")
                         for s, n in self.counts.items() for i in range(n)}
        self._records = {key: 0 for key in self._writers}
        self.stats = {s: dict(documents=0, documents_split=0, records=0, tokens=0, max_len=0,
                              max_id=-1) for s in self.counts}

    def add(self, split: str, doc_index: int, pieces: Sequence[np.ndarray]) -> None:
        """One document, already cut into ``pieces`` (each ``[n]`` int32), into ``split``."""
        key = (split, doc_index % self.counts[split])
        st = self.stats[split]
        st["documents"] += 1
        st["documents_split"] += len(pieces) > 1
        for piece in pieces:
            self._writers[key].write(np.ascontiguousarray(piece, RECORD_DTYPE).tobytes())
            self._records[key] += 1
            st["records"] += 1
            st["tokens"] += len(piece)
            st["max_len"] = max(st["max_len"], len(piece))
            st["max_id"] = max(st["max_id"], int(piece.max()) if len(piece) else -1)

    def commit(self, header: dict[str, Any]) -> dict[str, Any]:
        """Close the shards, write the manifest (``header`` + per-split stats), move into place."""
        for w in self._writers.values():
            w.close()
        splits = {}
        for s, n in self.counts.items():
            files = []
            for i in range(n):
                name = shard_name(s, i, n)
                if self._records[(s, i)]:
                    files.append(name)
                else:  # an empty shard (tiny corpus) is not worth a file
                    (self.tmp / name).unlink()
            splits[s] = {**self.stats[s], "files": files}
        manifest = {"format": PREPARED_FORMAT, **header, "splits": splits}
        atomic_write_bytes(self.tmp / MANIFEST, json.dumps(manifest, indent=1).encode())
        old = None
        if self.out.exists():
            old = self.out.parent / f".{self.out.name}.old-{os.getpid()}"
            os.replace(self.out, old)
        os.replace(self.tmp, self.out)
        if old is not None:
            _remove_tree(old)
        return manifest

    def abort(self) -> None:
        for w in self._writers.values():
            with contextlib.suppress(Exception):  # may fail again after an error; files go anyway
                w.close()
        _remove_tree(self.tmp)

    def __enter__(self) -> PreparedWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is not None:
            self.abort()


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


# --- prepare ------------------------------------------------------------------------------------
def prepare(source: str | Path, out: str | Path, tokenizer: Tokenizer, *, field: str = "text",
            seq_len: int | None = None, shards: int = 1, overwrite: bool = False,
            progress: bool = True, chunk: int = 1024) -> dict[str, Any]:
    """Tokenise a text source into ArrayRecord shards under ``out`` (see `PreparedWriter`);
    returns the manifest. Documents stream through in chunks (a corpus larger than memory is
    fine), go to train / eval by `sources.split_of`, get EOS appended and, with ``seq_len``,
    are cut into records of at most ``seq_len`` tokens (counted as ``documents_split``)."""
    from tqdm import tqdm

    if seq_len is not None and seq_len <= 0:
        raise ValueError(f"--seq-len must be positive, got {seq_len}")
    docs = sources.iter_documents(source, field)
    with PreparedWriter(out, shards=shards, overwrite=overwrite) as writer:
        bar = tqdm(desc="prepare", unit=" docs", disable=not progress, dynamic_ncols=True)
        index = 0
        for batch in _chunks(docs, chunk):
            stream, starts = tokenize_corpus(tokenizer, batch)
            for doc, a, b in zip(batch, starts[:-1], starts[1:], strict=True):
                ids = stream[a:b]
                step = seq_len or len(ids)
                pieces = [ids[i:i + step] for i in range(0, len(ids), step)]
                writer.add(sources.split_of(doc), index, pieces)
                index += 1
            bar.update(len(batch))
            bar.set_postfix(tokens=f"{sum(s['tokens'] for s in writer.stats.values()):,}")
        bar.close()
        if index == 0:
            raise DataError(f"data source {str(source)!r} has no documents: add text")
        header = {"source": str(source), "field": field, "seq_len": seq_len, "eos": True,
                  "tokenizer": {"name": Path(tokenizer.name).name, "fingerprint":
                                tokenizer.fingerprint, "vocab_size": tokenizer.vocab_size,
                                "eos_id": tokenizer.eos_id}}
        return writer.commit(header)


def _chunks(items: Iterable[str], n: int) -> Iterable[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch
