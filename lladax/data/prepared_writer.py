"""Writing prepared data: `prepare` (``lladax data prepare``) and its `PreparedWriter`.

`prepare` streams a text source (`sources`) through the tokenizer into ArrayRecord shards, one
file set per split, with a manifest naming the tokenizer; `lladax.data.prepared` reads them back.
`check_prepare` makes every check that needs no corpus first, so a refused prepare writes
nothing. The writer works in a hidden temp directory beside ``--out`` and renames it into place
at the end, so a reader never sees a half-written directory; the leftovers of a killed prepare
are swept by the next one (`_sweep_stale`).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import signal
import socket
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lladax.data import preflight, sources
from lladax.data.prepared import PREPARED_FORMAT, RECORD_DTYPE, shard_name, tokenize_corpus
from lladax.data.sources import MANIFEST, DataError
from lladax.files import atomic_write, check_destination, same_location

if TYPE_CHECKING:
    from lladax.data.tokenizer import Tokenizer


# --- the writer ---------------------------------------------------------------------------------
class PreparedWriter:
    """Writes token records into per-split ArrayRecord shards of a prepared directory.

    Everything goes to a hidden temp directory beside ``out``; `commit` writes the manifest and
    renames the directory into place, so a reader never sees a half-written ``out`` (an
    interrupted prepare leaves only the temp directory, removed by `abort`). The train split is
    spread over ``shards`` files (documents round-robin, so shards are even), eval over one.
    """

    def __init__(self, out: str | Path, *, shards: int, overwrite: bool = False) -> None:
        from array_record.python.array_record_module import ArrayRecordWriter

        check_shards(shards)
        self.out = Path(out).expanduser()
        # The shared rule: only an empty / new directory, or our own output with --overwrite.
        check_destination(
            self.out, markers=(MANIFEST,), what="prepared data", flag="--out", overwrite=overwrite
        )
        # Parents we create are removed again by `abort`: a refused prepare leaves no trace.
        missing = [d for d in [self.out.parent, *self.out.parent.parents] if not d.exists()]
        self._made = missing[-1] if missing else None
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            _sweep_stale(self.out)
            self.tmp = Path(
                tempfile.mkdtemp(dir=self.out.parent, prefix=f".{self.out.name}.tmp-{_owner()}-")
            )
        except OSError as e:
            self._remove_made()
            raise DataError(
                f"cannot write to {self.out.parent} ({e.strerror}): choose a writable --out"
            ) from None
        self.counts = {"train": shards, "eval": 1}
        self._writers: dict[tuple[str, int], Any] = {}
        try:
            for s, n in self.counts.items():
                for i in range(n):
                    self._writers[(s, i)] = ArrayRecordWriter(
                        str(self.tmp / shard_name(s, i, n)), "group_size:1"
                    )
        except Exception as e:  # e.g. out of file descriptors: nothing may stay behind
            self.abort()
            raise DataError(
                f"cannot create {shards} shard files in {self.out.parent} "
                f"({type(e).__name__}: {str(e)[:100]}): use fewer --shards"
            ) from None
        self._records = {key: 0 for key in self._writers}
        self.stats = {
            s: dict(documents=0, documents_split=0, records=0, tokens=0, max_len=0, max_id=-1)
            for s in self.counts
        }

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
        atomic_write(self.tmp / MANIFEST, json.dumps(manifest, indent=1).encode())
        old = None
        # SIGTERM waits until both renames are done: `out` is never left missing.
        masked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        try:
            if self.out.exists() or self.out.is_symlink():
                old = self.out.parent / f".{self.out.name}.old-{_owner()}"
                os.replace(self.out, old)
            os.replace(self.tmp, self.out)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, masked)
        if old is not None:  # a symlinked --out: drop the link, never its target's files
            old.unlink() if old.is_symlink() else _remove_tree(old)
        return manifest

    def abort(self) -> None:
        for w in self._writers.values():
            with contextlib.suppress(Exception):  # may fail again after an error; files go anyway
                w.close()
        _remove_tree(self.tmp)
        self._remove_made()

    def _remove_made(self) -> None:
        """Remove the (empty) parent directories this writer created."""
        if self._made is None:
            return
        for d in [self.out.parent, *self.out.parent.parents]:
            with contextlib.suppress(OSError):  # not empty (someone else wrote there): keep it
                d.rmdir()
            if d == self._made:
                break

    def __enter__(self) -> PreparedWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is not None:
            self.abort()


def _owner() -> str:
    """Tags the temp directories of this process (host and pid) so a later prepare can tell
    the leftovers of a killed one (`_sweep_stale`) from those of one still running."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _sweep_stale(out: Path) -> None:
    """Remove the temp / replaced directories that a prepare of ``out`` on this host left when
    it was killed (kill -9 runs no cleanup); those of a live process are kept."""
    pattern = re.compile(
        rf"\.{re.escape(out.name)}\.(tmp|old)-{re.escape(socket.gethostname())}"
        r"-(\d+)"
    )
    for p in out.parent.glob(f".{glob.escape(out.name)}.*-*"):
        m = pattern.match(p.name)
        if m is None or int(m[2]) == os.getpid():
            continue
        try:
            os.kill(int(m[2]), 0)
        except ProcessLookupError:
            _remove_tree(p)
        except OSError:
            pass  # alive under another user


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


# --- prepare ------------------------------------------------------------------------------------
def check_shards(shards: int) -> None:
    """Each train shard is an open file while prepare runs: stay well inside the fd limit."""
    import resource

    limit = min(resource.getrlimit(resource.RLIMIT_NOFILE)[0], 1 << 16) - 64
    if not 1 <= shards <= limit:
        raise DataError(
            f"--shards must be between 1 and {limit} (each shard is a file held open "
            f"while writing; `ulimit -n` sets the limit), got {shards}"
        )


def check_prepare(
    source: str | Path,
    out: str | Path,
    *,
    field: str = "text",
    seq_len: int | None = None,
    shards: int = 1,
    overwrite: bool = False,
    tokenizer_path: str | Path | None = None,
) -> None:
    """Every check `prepare` can make before reading the corpus, in milliseconds and with nothing
    written: arguments, the source (`preflight.check_source`; text, not already prepared), the
    destination (`files.check_destination`), and that neither the source nor the tokenizer
    file would be read from or deleted with ``out``. Raises a one-line ValueError / DataError."""
    if seq_len is not None and seq_len < 2:
        raise DataError(
            f"--seq-len must be at least 2 (a record needs a token and room to "
            f"predict it), got {seq_len}"
        )
    check_shards(shards)
    preflight.check_source(str(source), field=field)
    spec = sources.parse_source(source)
    if spec.tokenized:
        raise DataError(
            f"--source {source} is prepared (tokenised) data, not text: train on it "
            "directly (data.source), or pass the original text source"
        )
    check_destination(
        out, markers=(MANIFEST,), what="prepared data", flag="--out", overwrite=overwrite
    )
    out_p = Path(out).expanduser().absolute()
    base = next(d for d in [out_p, *out_p.parents] if d.exists())  # what mkdir starts from
    if not (base.is_dir() and os.access(base, os.W_OK | os.X_OK)):
        why = "not a directory" if base.exists() and not base.is_dir() else "permission denied"
        raise DataError(f"cannot write to {base} ({why}): choose a writable --out")
    where = Path(spec.location).expanduser()
    if spec.kind in ("files", "tfds") and where.exists() and same_location(where, out):
        raise DataError(
            f"--out {out} and --source {source} overlap (the same directory, or one "
            "inside the other): the output would be read as input or replace the "
            "source; pass an --out outside the source"
        )
    tok = Path(tokenizer_path).expanduser() if tokenizer_path else None
    if (
        tok is not None
        and tok.exists()
        and tok.resolve().is_relative_to(Path(out).expanduser().resolve())
    ):
        raise DataError(
            f"--tokenizer {tokenizer_path} lies inside --out {out}, which prepare "
            "replaces: keep the tokenizer outside the output directory"
        )


def prepare(
    source: str | Path,
    out: str | Path,
    tokenizer: Tokenizer,
    *,
    field: str = "text",
    seq_len: int | None = None,
    shards: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    chunk: int = 1024,
) -> dict[str, Any]:
    """Tokenise a text source into ArrayRecord shards under ``out`` (see `PreparedWriter`);
    returns the manifest. Documents stream through in chunks (a corpus larger than memory is
    fine), go to train / eval by `sources.split_of`, get EOS appended and, with ``seq_len``,
    are cut into records of at most ``seq_len`` tokens (counted as ``documents_split``).
    Refused (nothing written) by `check_prepare`, or when no document lands in train."""
    from tqdm import tqdm

    check_prepare(
        source,
        out,
        field=field,
        seq_len=seq_len,
        shards=shards,
        overwrite=overwrite,
        tokenizer_path=tokenizer.name,
    )
    docs = sources.iter_documents(source, field)
    with PreparedWriter(out, shards=shards, overwrite=overwrite) as writer:
        bar = tqdm(desc="prepare", unit=" docs", disable=not progress, dynamic_ncols=True)
        index = 0
        for batch in _chunks(docs, chunk):
            stream, starts = tokenize_corpus(tokenizer, batch)
            for doc, a, b in zip(batch, starts[:-1], starts[1:], strict=True):
                ids = stream[a:b]
                step = seq_len or len(ids)
                pieces = [ids[i : i + step] for i in range(0, len(ids), step)]
                writer.add(sources.split_of(doc), index, pieces)
                index += 1
            bar.update(len(batch))
            bar.set_postfix(tokens=f"{sum(s['tokens'] for s in writer.stats.values()):,}")
        bar.close()
        if index == 0:
            raise DataError(f"data source {str(source)!r} has no documents: add text")
        if writer.stats["train"]["documents"] == 0:  # every document hashed into eval
            raise DataError(
                f"data source {str(source)!r} has {index} document(s), none in the "
                "train split (~98% by hash): add text"
            )
        header = {
            "source": str(source),
            "field": field,
            "seq_len": seq_len,
            "eos": True,
            "tokenizer": {
                "name": Path(tokenizer.name).name,
                "fingerprint": tokenizer.fingerprint,
                "vocab_size": tokenizer.vocab_size,
                "eos_id": tokenizer.eos_id,
            },
        }
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
