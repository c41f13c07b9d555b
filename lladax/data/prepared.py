"""Tokenised corpora: token ids of a source split, the token cache, reading prepared shards.

`corpus_tokens` gives a split as one int32 stream plus document offsets: a text source
(`lladax.data.sources`) is tokenised once (EOS after each document) and cached under the cache
directory; a prepared directory is read from its shards. A prepared directory (written by
`lladax.data.prepared_writer`, ``lladax data prepare``) holds ArrayRecord shards, one file set per
split, and a manifest naming the tokenizer (`read_manifest`, `prepared_files`). Records are raw
little-endian int32 token ids, EOS included (`decode_record`); readers refuse shards of another
tokenizer (`check_prepared`) and name the fix for a damaged or incomplete directory.
"""

from __future__ import annotations

import glob
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lladax.data import sources
from lladax.data.sources import EMBEDDED, MANIFEST, DataError, check_split

if TYPE_CHECKING:
    from lladax.data.tokenizer import Tokenizer

PREPARED_FORMAT = "lladax-tokens-v1"
_STATS = ("documents", "documents_split", "records", "tokens", "max_len")
RECORD_DTYPE = np.dtype("<i4")  # records are raw little-endian int32 token ids


# --- tokenise -----------------------------------------------------------------------------------
def tokenize_corpus(
    tokenizer: Tokenizer, documents: Sequence[str], *, add_eos: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Documents -> (stream int32 ``[n_tokens]``, starts int64 ``[n_docs + 1]``): document ``i``
    is ``stream[starts[i]:starts[i + 1]]``, EOS last if ``add_eos``."""
    encoded = tokenizer.encode_batch(list(documents))
    eos = [tokenizer.eos_id] if add_eos else []
    starts = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum([len(ids) + len(eos) for ids in encoded], out=starts[1:])
    stream = np.empty(int(starts[-1]), np.int32)
    for i, ids in enumerate(encoded):
        stream[starts[i] : starts[i + 1]] = ids + eos
    return stream, starts


def tokenize_documents(
    tokenizer: Tokenizer, documents: Sequence[str], *, add_eos: bool = True
) -> np.ndarray:
    """Documents -> one int32 stream ``[n_tokens]``, EOS after each document if ``add_eos``."""
    return tokenize_corpus(tokenizer, documents, add_eos=add_eos)[0]


def corpus_tokens(
    tokenizer: Tokenizer,
    *,
    source: str | Path = EMBEDDED,
    split: str = "train",
    field: str = "text",
    add_eos: bool = True,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
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
    key = (
        f"{tokenizer.fingerprint}_{sources.source_fingerprint(source, field)}_{split}_"
        f"{'eos' if add_eos else 'noeos'}"
    )
    path = sources.cache_root(cache_dir) / "tokens" / f"{key}.npz"
    if use_cache and path.is_file():
        try:
            with np.load(path) as f:
                return f["stream"], f["starts"]
        except (OSError, ValueError, KeyError):
            pass  # a corrupt cache file: rebuild it
    stream, starts = tokenize_corpus(
        tokenizer, sources.load_documents(source, split, field), add_eos=add_eos
    )
    if use_cache:
        buf = io.BytesIO()
        np.savez(buf, stream=stream, starts=starts)
        sources.write_cache(path, buf.getvalue())
    return stream, starts


def token_stream(
    tokenizer: Tokenizer,
    *,
    source: str | Path = EMBEDDED,
    split: str = "train",
    add_eos: bool = True,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    field: str = "text",
) -> np.ndarray:
    """The tokenised split as one int32 stream ``[n_tokens]`` (cached, see `corpus_tokens`)."""
    return corpus_tokens(
        tokenizer,
        source=source,
        split=split,
        field=field,
        add_eos=add_eos,
        cache_dir=cache_dir,
        use_cache=use_cache,
    )[0]


# --- reading prepared shards --------------------------------------------------------------------
def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.array_record"


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of a prepared directory (raises `DataError` naming the problem and the fix)."""
    path = Path(directory).expanduser() / MANIFEST
    if not path.is_file():
        raise DataError(
            f"{path.parent} has no {MANIFEST}: it is not (or not completely) written "
            "by `lladax data prepare`; re-run prepare"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(
            f"{path} is unreadable ({type(e).__name__}: {e}): re-run `lladax data prepare`"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != PREPARED_FORMAT:
        raise DataError(
            f"{path} is not a {PREPARED_FORMAT} manifest: re-run "
            "`lladax data prepare` with this version of lladax"
        )
    problem = _manifest_problem(manifest)
    if problem:
        raise DataError(f"{path} is damaged ({problem}): re-run `lladax data prepare`")
    return manifest


def _manifest_problem(manifest: dict[str, Any]) -> str | None:
    """What is wrong with a manifest's structure, or None. Shard names must be bare file names
    so that a hand-edited manifest cannot make a reader open files outside its directory."""
    tok = manifest.get("tokenizer")
    if not isinstance(tok, dict) or not {"name", "fingerprint", "vocab_size"} <= set(tok):
        return "no tokenizer name / fingerprint / vocab_size"
    splits = manifest.get("splits")
    if not isinstance(splits, dict):
        return "no splits"
    for s in ("train", "eval"):
        st = splits.get(s)
        if not isinstance(st, dict) or not isinstance(st.get("files"), list):
            return f"no {s!r} split with a list of files"
        if not all(isinstance(st.get(k), int) for k in _STATS):
            return f"split {s!r} lacks the counts {list(_STATS)}"
        for name in st["files"]:
            if not (
                isinstance(name, str)
                and name.endswith(".array_record")
                and name == Path(name).name
                and not name.startswith(".")
            ):
                return f"shard name {str(name)[:60]!r} is not a file name in the directory"
    seq_len = manifest.get("seq_len")
    if seq_len is not None and not (isinstance(seq_len, int) and seq_len > 0):
        return f"seq_len {seq_len!r} is not a positive integer"
    return None


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
            raise DataError(
                f"arrayrecord:{location} spans {len(parents)} directories: use "
                "shards of one prepared directory"
            )
        directory = parents.pop()
    else:
        if not p.exists():
            raise FileNotFoundError(
                f"prepared data {p} does not exist: write it with "
                "`lladax data prepare --source ... --out DIR`"
            )
        directory, matched = (p, None) if p.is_dir() else (p.parent, [p])
    manifest = read_manifest(directory)
    wanted = ["train", "eval"] if split == "all" else [split]
    files = [directory / name for s in wanted for name in manifest["splits"][s]["files"]]
    if matched is not None:
        files = [f for f in files if f in set(matched)]
    if not files:
        raise DataError(
            f"prepared data {location} has no {split!r} shards (it holds "
            f"{ {s: v['records'] for s, v in manifest['splits'].items()} } records)"
        )
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise DataError(
            f"prepared data {directory} is missing shard(s) {missing[:3]}: the copy "
            "is incomplete; copy it again or re-run `lladax data prepare`"
        )
    return manifest, files


def check_prepared(manifest: dict[str, Any], tokenizer: Tokenizer, where: str) -> None:
    """Refuse shards tokenised by a different tokenizer than the one the run uses."""
    t = manifest["tokenizer"]
    if t["fingerprint"] != tokenizer.fingerprint or t["vocab_size"] != tokenizer.vocab_size:
        raise DataError(
            f"prepared data {where} was tokenised by {t['name']} (vocab {t['vocab_size']}, "
            f"fingerprint {t['fingerprint']}) but this run uses {tokenizer.name} (vocab "
            f"{tokenizer.vocab_size}, fingerprint {tokenizer.fingerprint}): set data.tokenizer "
            "to the tokenizer it was prepared with, or re-run `lladax data prepare --tokenizer`"
        )


def decode_record(record: bytes) -> np.ndarray:
    """One stored record -> token ids ``[n]`` int32."""
    if len(record) % RECORD_DTYPE.itemsize:
        raise DataError(
            f"a prepared record has {len(record)} bytes, not a whole number of int32 "
            "ids: the shard is corrupt; re-run `lladax data prepare`"
        )
    return np.frombuffer(record, RECORD_DTYPE).astype(np.int32)


def record_source(files: Sequence[Path]) -> Any:
    """A grain random-access source over the records of ``files``."""
    import grain

    try:
        return grain.sources.ArrayRecordDataSource([str(f) for f in files])
    except Exception as e:  # array_record raises RuntimeError / ValueError on a damaged file
        raise DataError(
            f"cannot read prepared shards {[f.name for f in files][:3]} "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}): "
            "they are damaged; re-run `lladax data prepare`"
        ) from None


def read_records(files: Sequence[Path]) -> list[np.ndarray]:
    """Every record of ``files`` in order (small splits such as eval)."""
    source = record_source(files)
    try:
        return [decode_record(source[i]) for i in range(len(source))]
    except DataError:
        raise
    except Exception as e:
        raise DataError(
            f"cannot read prepared shards {[f.name for f in files][:3]} "
            f"({type(e).__name__}): they are damaged; re-run `lladax data prepare`"
        ) from None
