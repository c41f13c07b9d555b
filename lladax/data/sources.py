"""Where training text comes from: source specs, document readers, the train / eval split.

A source spec is one string (``config.data.source``; full description in docs/data.md):
``"embedded"`` (Python's own docs, offline); a ``.txt`` file (documents separated by blank lines),
``.jsonl`` file (the document is each line's ``field``) or a directory of them; a directory
written by ``lladax data prepare`` (it holds ``manifest.json``), or ``arrayrecord:GLOB`` for some
of its shards; ``tfds:NAME[:SPLIT]``, a TFDS dataset read with ``tfds.data_source`` (no
TensorFlow, never downloaded: NAME is registered under ``$TFDS_DATA_DIR`` or is a builder
directory such as ``/data/my_set/1.0.0``; SPLIT defaults to ``train``, slices allowed).

Text sources yield documents (`iter_documents`); each goes to ``"train"`` or ``"eval"`` by a hash
of its text (`split_of`), so every source has the same held-out ~2% without a second file.
Prepared (tokenised) directories are only recognised here (`parse_source`);
`prepared_writer` writes them and `prepared` reads them. The files themselves are
read by `lladax.data.textio` (strict UTF-8, .txt paragraphs, .jsonl records), which defines
`DataError`. `check_source` refuses a bad source in milliseconds, before start-up.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lladax.data import textio
from lladax.data.corpus import embedded_documents, embedded_fingerprint
from lladax.data.textio import DataError  # defined below every reader; public as sources.DataError
from lladax.files import atomic_write

EVAL_FRACTION = 0.02
SPLITS = ("train", "eval", "all")
EMBEDDED = "embedded"
TEXT_SUFFIXES = (".txt", ".jsonl")
MANIFEST = "manifest.json"  # marks a directory written by `lladax.data.prepared_writer.prepare`


# --- small shared helpers -----------------------------------------------------------------------
def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir`` or ``$LLADAX_CACHE`` or ``~/.cache/lladax`` (created on demand by writers)."""
    if cache_dir is None:
        cache_dir = os.environ.get("LLADAX_CACHE") or Path.home() / ".cache" / "lladax"
    return Path(cache_dir).expanduser()


def write_cache(path: Path, payload: bytes) -> Path:
    """`files.atomic_write` for a cache file: a cache directory that cannot be written (a file,
    read-only, disk full) is a one-line error naming ``$LLADAX_CACHE``, the fix."""
    try:
        return atomic_write(path, payload)
    except OSError as e:
        raise DataError(
            f"cannot write the cache file {path} ({e.strerror or type(e).__name__}): "
            "set LLADAX_CACHE to a writable directory"
        ) from None


def documents_digest(documents: Sequence[str]) -> str:
    """A short content hash of a list of documents (order-sensitive)."""
    h = hashlib.sha256()
    for doc in documents:
        h.update(doc.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()[:16]


def split_of(document: str) -> str:
    """``"eval"`` for about `EVAL_FRACTION` of documents (by content hash), else ``"train"``."""
    bucket = int(hashlib.sha256(document.encode("utf-8", "surrogatepass")).hexdigest()[:8], 16)
    return "eval" if bucket % 10_000 < EVAL_FRACTION * 10_000 else "train"


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")


# --- source specs -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """A parsed source string: ``kind`` is embedded / files / arrayrecord / tfds."""

    kind: str
    location: str  # path, glob, TFDS name or builder directory ("" for embedded)
    tfds_split: str = "train"

    @property
    def tokenized(self) -> bool:
        return self.kind == "arrayrecord"


_TFDS = re.compile(r"^(?P<name>[^:\[]+(?::\d[\d.*]*)?)(?::(?P<split>.+))?$")


def parse_source(source: str | Path) -> SourceSpec:
    """The `SourceSpec` of a source string (see the module docstring); no file is read."""
    s = str(source)
    if s == EMBEDDED:
        return SourceSpec("embedded", "")
    if s.startswith("arrayrecord:"):
        return SourceSpec("arrayrecord", s.removeprefix("arrayrecord:"))
    if s.startswith("tfds:"):
        m = _TFDS.match(s.removeprefix("tfds:"))
        if not m:
            raise DataError(
                f"bad TFDS source {s!r}: write tfds:NAME[:SPLIT], e.g. "
                "tfds:wiki40b/en:train or tfds:/data/my_set/1.0.0:validation"
            )
        return SourceSpec("tfds", m["name"], m["split"] or "train")
    p = Path(s).expanduser()
    if (p.is_dir() and (p / MANIFEST).is_file()) or p.suffix == ".array_record":
        return SourceSpec("arrayrecord", s)
    return SourceSpec("files", s)


def source_fingerprint(source: str | Path, field: str = "text") -> str:
    """Cheap identity of a text source for cache keys: `embedded_fingerprint` for ``"embedded"``,
    the spec for TFDS, else the resolved path with each file's size and mtime (and ``field``)."""
    spec = parse_source(source)
    if spec.kind == "embedded":
        return embedded_fingerprint()
    if spec.kind == "tfds":
        p = Path(spec.location).expanduser()
        where = str(p.resolve()) if p.is_dir() else os.environ.get("TFDS_DATA_DIR", "")
        ident: Any = [spec.location, spec.tfds_split, where, field]
    else:
        p = Path(spec.location).expanduser().resolve()
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        ident = [
            str(p),
            field,
            [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.exists()],
        ]
    return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:16]


# --- text documents -----------------------------------------------------------------------------
def text_files(path: str | Path) -> list[Path]:
    """The ``.txt`` / ``.jsonl`` files of a file or directory source (raises with the fix)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(
            f"data path {p} does not exist: pass a .txt/.jsonl file or a directory of them, "
            f"{EMBEDDED!r} for the built-in corpus, or a `lladax data prepare` directory"
        )
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in TEXT_SUFFIXES)
        if not files:
            raise DataError(f"data directory {p} holds no .txt or .jsonl files")
        return files
    if p.suffix not in TEXT_SUFFIXES:
        raise DataError(f"data file {p} has an unknown type: use a .txt or .jsonl file")
    return [p]


def _tfds_source(spec: SourceSpec) -> Any:
    """The random-access TFDS data source of a ``tfds:`` spec (never downloads)."""
    import tensorflow_datasets as tfds

    where = Path(spec.location).expanduser()
    try:
        if where.is_dir():
            return tfds.builder_from_directory(str(where)).as_data_source(split=spec.tfds_split)
        return tfds.data_source(
            spec.location,
            split=spec.tfds_split,
            download=False,
            data_dir=os.environ.get("TFDS_DATA_DIR") or None,
        )
    except Exception as e:  # tfds raises many types; all mean "cannot open this source"
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DataError(
            f"cannot open TFDS source tfds:{spec.location}:{spec.tfds_split} "
            f"({type(e).__name__}: {first}): build it first (`tfds build NAME` with "
            "TFDS_DATA_DIR set) or pass the builder directory, tfds:/path/NAME/VERSION"
        ) from None


def _tfds_text(record: Any, field: str, where: str) -> str:
    if not isinstance(record, dict) or field not in record:
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise DataError(f"{where}: no feature {field!r} (features: {keys}): set data.field")
    value = record[field]
    if isinstance(value, bytes):
        return textio.decode_text(value, f"{where} feature {field!r}")
    if isinstance(value, str):
        return value
    raise DataError(
        f"{where}: feature {field!r} is {type(value).__name__}, not text: "
        "set data.field to a text feature"
    )


def iter_documents(source: str | Path = EMBEDDED, field: str = "text") -> Iterator[str]:
    """Every document of a text source, in a fixed order, read lazily (file by file, record by
    record), so a corpus larger than memory can stream through `lladax data prepare`."""
    spec = parse_source(source)
    if spec.kind == "embedded":
        yield from embedded_documents()
    elif spec.kind == "files":
        for f in text_files(spec.location):
            yield from textio.read_file(f, field)
    elif spec.kind == "tfds":
        ds = _tfds_source(spec)
        for i in range(len(ds)):
            text = _tfds_text(ds[i], field, f"tfds:{spec.location}:{spec.tfds_split}[{i}]")
            if text.strip():
                yield text
    else:
        raise DataError(
            f"{source!r} is prepared (tokenised) data, not text: use it directly as "
            "data.source for training, or pass the original text source"
        )


def load_documents(
    source: str | Path = EMBEDDED, split: str = "train", field: str = "text"
) -> list[str]:
    """Documents of a text ``source`` in ``split`` (train / eval / all)."""
    check_split(split)
    docs = [d for d in iter_documents(source, field) if split == "all" or split_of(d) == split]
    if not docs:
        raise DataError(
            f"data source {str(source)!r} has no documents in split {split!r}: add "
            "text (eval takes ~2% of documents by hash; a tiny source may have none), "
            "or use split='all'"
        )
    return docs


def read_documents(path: str | Path, field: str = "text") -> list[str]:
    """All documents of a ``.txt`` / ``.jsonl`` file or a directory of them."""
    return [d for f in text_files(path) for d in textio.read_file(f, field)]


# data.format: "text" pretraining rows, "chat" SFT batches (lladax.data.sft), "preference"
# (prompt, chosen, rejected) pair batches for DPO / VRPO (lladax.data.preference)
FORMATS = ("text", "chat", "preference")
