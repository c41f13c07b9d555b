"""Text sources, tokenisation, packing and batching with grain.

Sources (`load_documents`):
  * ``"embedded"``: text that ships with Python itself (``pydoc_data.topics`` plus the docstrings
    of a fixed list of pure-Python standard-library modules), so training works offline on a fresh
    machine. Deterministic for a given Python build.
  * a ``.txt`` file: documents are separated by one or more blank lines.
  * a ``.jsonl`` file: one JSON object per line, the document is its ``"text"`` field.
  * a directory: every ``*.txt`` / ``*.jsonl`` file below it (recursive, sorted by path), each read
    with the rule above.

Every source is split deterministically into ``"train"`` and ``"eval"`` by a hash of each
document's text (about `EVAL_FRACTION` of the documents go to eval); ``split="all"`` keeps both.

Pipeline (`make_batches`): tokenise each document, append EOS, concatenate into one stream, cut
into rows of ``seq_len`` tokens (LLaDA pretraining packs documents with EOS separators under full
attention), shuffle rows with a seed (a fresh permutation each epoch), repeat, batch with
``drop_remainder``. Elements are ``{"tokens": np.int32 [batch, seq_len]}``. The returned grain
iterator checkpoints with ``get_state()`` / ``set_state()``. The token stream is cached as ``.npy``
under the cache directory, keyed by tokenizer fingerprint, source fingerprint and split.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lladax.corpus import embedded_documents, embedded_fingerprint

if TYPE_CHECKING:
    import grain

    from lladax.tokenizer import Tokenizer

EVAL_FRACTION = 0.02
SPLITS = ("train", "eval", "all")
EMBEDDED = "embedded"

class DataError(ValueError):
    """A data source is missing, empty or malformed; the message names the source and the fix."""


def source_fingerprint(source: str | Path) -> str:
    """Cheap identity of a source for cache keys: `embedded_fingerprint` for ``"embedded"``,
    else the resolved path with each file's size and mtime."""
    if str(source) == EMBEDDED:
        return embedded_fingerprint()
    p = Path(source).expanduser().resolve()
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    stats = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.exists()]
    return hashlib.sha256(json.dumps([str(p), stats]).encode()).hexdigest()[:16]


# --- files, cache, splits -----------------------------------------------------------------------
def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir`` or ``$LLADAX_CACHE`` or ``~/.cache/lladax`` (created on demand by writers)."""
    if cache_dir is None:
        cache_dir = os.environ.get("LLADAX_CACHE") or Path.home() / ".cache" / "lladax"
    return Path(cache_dir).expanduser()


def atomic_write_bytes(path: Path, payload: bytes) -> Path:
    """Write ``payload`` to a temp file beside ``path`` then rename it into place (atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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


def _read_txt(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    return [doc.strip("\n") for doc in re.split(r"\n[ \t\r]*\n", text) if doc.strip()]


def _read_jsonl(path: Path) -> list[str]:
    docs = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                text = record["text"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DataError(f"{path}:{lineno}: expected a JSON object with a 'text' field "
                                f"({type(e).__name__}: {e})") from None
            if not isinstance(text, str):
                raise DataError(f"{path}:{lineno}: 'text' must be a string, got {type(text)}")
            if text.strip():
                docs.append(text)
    return docs


def read_documents(path: str | Path) -> list[str]:
    """All documents of a ``.txt`` / ``.jsonl`` file or a directory of them (see module doc)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(
            f"data path {p} does not exist: pass a .txt/.jsonl file or a directory of them, "
            f"or {EMBEDDED!r} for the built-in corpus")
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in (".txt", ".jsonl"))
        if not files:
            raise DataError(f"data directory {p} holds no .txt or .jsonl files")
    elif p.suffix in (".txt", ".jsonl"):
        files = [p]
    else:
        raise DataError(f"data file {p} has an unknown type: use a .txt or .jsonl file")
    docs: list[str] = []
    for f in files:
        docs.extend(_read_jsonl(f) if f.suffix == ".jsonl" else _read_txt(f))
    return docs


def load_documents(source: str | Path = EMBEDDED, split: str = "train") -> list[str]:
    """Documents of ``source`` (``"embedded"`` or a path) in ``split`` (train / eval / all)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    name = str(source)
    docs = embedded_documents() if name == EMBEDDED else read_documents(source)
    if split != "all":
        docs = [d for d in docs if split_of(d) == split]
    if not docs:
        raise DataError(f"data source {name!r} has no documents in split {split!r}: add text "
                        "(eval takes ~2% of documents by hash; a tiny source may have none), "
                        "or use split='all'")
    return docs


# --- tokenise, pack, batch ----------------------------------------------------------------------
def tokenize_documents(tokenizer: Tokenizer, documents: Sequence[str], *,
                       add_eos: bool = True) -> np.ndarray:
    """Documents -> one int32 stream ``[n_tokens]``, EOS after each document if ``add_eos``."""
    encoded = tokenizer.encode_batch(list(documents))
    eos = [tokenizer.eos_id] if add_eos else []
    lengths = [len(ids) + len(eos) for ids in encoded]
    stream = np.empty(sum(lengths), np.int32)
    pos = 0
    for ids, n in zip(encoded, lengths, strict=True):
        stream[pos:pos + n] = ids + eos
        pos += n
    return stream


def token_stream(tokenizer: Tokenizer, *, source: str | Path = EMBEDDED, split: str = "train",
                 add_eos: bool = True, cache_dir: str | Path | None = None,
                 use_cache: bool = True) -> np.ndarray:
    """The tokenised split as int32 ``[n_tokens]``, cached at
    ``<cache>/tokens/<tokenizer fingerprint>_<source fingerprint>_<split>_<eos>.npy``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    if str(source) != EMBEDDED and not Path(source).expanduser().exists():
        read_documents(source)  # raises the FileNotFoundError with the fix
    key = (f"{tokenizer.fingerprint}_{source_fingerprint(source)}_{split}_"
           f"{'eos' if add_eos else 'noeos'}")
    path = cache_root(cache_dir) / "tokens" / f"{key}.npy"
    if use_cache and path.is_file():
        try:
            return np.load(path)
        except (OSError, ValueError):
            pass  # a corrupt cache file: rebuild it
    docs = load_documents(source, split)
    stream = tokenize_documents(tokenizer, docs, add_eos=add_eos)
    if use_cache:
        buf = io.BytesIO()
        np.save(buf, stream)
        atomic_write_bytes(path, buf.getvalue())
    return stream


def pack_rows(stream: np.ndarray, seq_len: int) -> np.ndarray:
    """Cut a stream ``[n]`` into rows ``[n // seq_len, seq_len]`` (the tail is dropped)."""
    if seq_len <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    n_rows = len(stream) // seq_len
    return stream[:n_rows * seq_len].reshape(n_rows, seq_len)


def _as_example(row: np.ndarray) -> dict[str, np.ndarray]:
    return {"tokens": row}


def _rows(tokenizer: Tokenizer, source: str | Path, split: str, seq_len: int, batch_size: int,
          add_eos: bool, cache_dir: str | Path | None) -> np.ndarray:
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    stream = token_stream(tokenizer, source=source, split=split, add_eos=add_eos,
                          cache_dir=cache_dir)
    rows = pack_rows(stream, seq_len)
    if len(rows) == 0:
        raise DataError(f"data source {str(source)!r} split {split!r} has {len(stream)} tokens, "
                        f"fewer than one row of seq_len={seq_len}: add data or lower seq_len")
    return rows


def make_dataset(tokenizer: Tokenizer, *, source: str | Path = EMBEDDED, split: str = "train",
                 seq_len: int, batch_size: int, seed: int = 0, num_epochs: int | None = None,
                 add_eos: bool = True, process_index: int = 0, process_count: int = 1,
                 cache_dir: str | Path | None = None) -> grain.MapDataset:
    """The grain `MapDataset` behind `make_batches` (rows -> shard -> shuffle -> repeat -> batch).

    Each process (host) takes every ``process_count``-th row starting at ``process_index``, so
    hosts see disjoint data; ``batch_size`` is per process.
    """
    import grain

    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count})")
    rows = _rows(tokenizer, source, split, seq_len, batch_size, add_eos, cache_dir)
    ds = grain.MapDataset.source(rows)
    if process_count > 1:
        ds = ds.slice(slice(process_index, None, process_count))
        if len(ds) == 0:
            raise DataError(f"{len(rows)} rows are too few for {process_count} processes")
    ds = ds.shuffle(seed=seed).repeat(num_epochs).map(_as_example)
    return ds.batch(batch_size, drop_remainder=True)


def make_batches(tokenizer: Tokenizer, *, source: str | Path = EMBEDDED, split: str = "train",
                 seq_len: int, batch_size: int, seed: int = 0, num_epochs: int | None = None,
                 add_eos: bool = True, process_index: int = 0, process_count: int = 1,
                 cache_dir: str | Path | None = None) -> grain.DatasetIterator:
    """A checkpointable iterator of ``{"tokens": np.int32 [batch_size, seq_len]}``.

    Documents are tokenised, joined with EOS and packed into rows; rows are shuffled with
    ``seed`` (a new permutation every epoch) and repeated ``num_epochs`` times (None: forever).
    Resume exactly with ``it.get_state()`` / ``it.set_state(state)`` (or grain's Orbax handler).
    """
    return iter(make_dataset(tokenizer, source=source, split=split, seq_len=seq_len,
                             batch_size=batch_size, seed=seed, num_epochs=num_epochs,
                             add_eos=add_eos, process_index=process_index,
                             process_count=process_count, cache_dir=cache_dir))


def eval_batches(tokenizer: Tokenizer, *, source: str | Path = EMBEDDED, split: str = "eval",
                 seq_len: int, batch_size: int, max_batches: int | None = None,
                 add_eos: bool = True, cache_dir: str | Path | None = None
                 ) -> list[dict[str, np.ndarray]]:
    """The held-out split as a fixed list of ``{"tokens": np.int32 [batch_size, seq_len]}``,
    in order (no shuffle), at most ``max_batches``; the last partial batch is dropped."""
    rows = _rows(tokenizer, source, split, seq_len, batch_size, add_eos, cache_dir)
    n = len(rows) // batch_size
    if max_batches is not None:
        n = min(n, max_batches)
    if n == 0:
        raise DataError(f"data source {str(source)!r} split {split!r} has {len(rows)} rows of "
                        f"seq_len={seq_len}, fewer than batch_size={batch_size}: lower one")
    return [{"tokens": rows[i * batch_size:(i + 1) * batch_size].copy()} for i in range(n)]

