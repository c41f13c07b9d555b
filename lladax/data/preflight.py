"""Refuse a bad data source in milliseconds, before JAX starts: `check_source`.

It reads no more than the head of each file and imports no JAX, so `lladax train` and
`lladax data prepare` fail with the reader's one-line `DataError` before any slow start-up.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lladax.data import chat, preference, prepared, textio
from lladax.data.sources import FORMATS, DataError, SourceSpec, parse_source, text_files

_SOURCE_KINDS = (
    "'embedded', a .txt/.jsonl file or a directory of them, a `lladax data prepare` "
    "directory, arrayrecord:GLOB or tfds:NAME[:SPLIT]"
)


def check_source(source: str, *, field: str = "text", fmt: str = "text") -> None:
    """Refuse a data source that the readers would refuse later, in milliseconds (no JAX, no
    tokenisation, at most the first `textio.HEAD_BYTES` of each file), so `lladax train` and `lladax
    data prepare` fail before start-up. Raises a one-line `DataError` (the reader's message).

    ``fmt="text"``: embedded; .txt/.jsonl files (UTF-8, first jsonl record has ``field``) or a
    directory of them; a prepared directory (manifest parses, shard files exist) or
    ``arrayrecord:GLOB``; ``tfds:NAME`` located on disk. ``fmt="chat"``: ``synthetic:<tasks>``
    or a chat .jsonl file / directory whose first record of each file is a valid dialogue.
    ``fmt="preference"``: the same for pairs (`preference.check_preference_source`).
    """
    s = str(source)
    if not s.strip():
        raise DataError(
            f"data.source is empty: set it to {_SOURCE_KINDS}"
            + {
                "chat": " (a chat .jsonl for format='chat')",
                "preference": " (a preference .jsonl or synthetic:<tasks> for format='preference')",
            }.get(fmt, "")
        )
    if fmt not in FORMATS:
        raise DataError(f"data.format={fmt!r} is unknown: use one of {FORMATS}")
    try:
        if fmt == "chat":
            chat.check_chat_source(s)
            return
        if fmt == "preference":
            preference.check_preference_source(s)
            return
        if not field:
            raise DataError(
                "data.field is empty: set it to the text field of the jsonl / TFDS "
                "records (default 'text')"
            )
        if s.startswith("synthetic:"):
            raise DataError(
                f"{s!r} is a chat (SFT) source: set data.format='chat', or pass a text source"
            )
        spec = parse_source(s)
        if spec.kind == "files":
            _check_text_files(spec.location, field)
        elif spec.kind == "arrayrecord":
            prepared.prepared_files(spec.location, "all")
        elif spec.kind == "tfds":
            _check_tfds(spec)
    except DataError:
        raise
    except (FileNotFoundError, ValueError) as e:  # the readers' message as the one error type
        raise DataError(str(e)) from None


def _check_text_files(location: str, field: str) -> None:
    has_text = False
    for f in text_files(location):
        if f.suffix == ".jsonl":
            first = textio.first_line(f)
            if first is not None:
                textio.jsonl_text(first[1], field, first[0])
                has_text = True
        else:
            has_text |= bool(textio.read_head(f)[0].strip())
    if not has_text:
        raise DataError(
            f"data source {location!r} has no documents (its files are empty): add text"
        )


def _check_tfds(spec: SourceSpec) -> None:
    """Find the builder directory of a ``tfds:`` spec on disk as `tfds.data_source` would
    (``$TFDS_DATA_DIR`` or ~/tensorflow_datasets; never downloads) and check its split."""
    where = Path(spec.location).expanduser()
    fix = (
        "build it first (`tfds build NAME` with TFDS_DATA_DIR set) or pass the builder "
        "directory, tfds:/path/NAME/VERSION"
    )
    if where.is_dir():
        found = [where]
    elif spec.location.startswith(("/", "~", ".")):
        raise DataError(f"TFDS builder directory {where} does not exist: {fix}")
    else:
        root = Path(os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets").expanduser()
        name, _, version = spec.location.partition(":")
        base = root / name
        found = sorted(base.glob(version or "*"), reverse=True) if base.is_dir() else []
        found = [d for d in found if (d / "dataset_info.json").is_file()]
        if not found:
            raise DataError(
                f"cannot open TFDS source tfds:{spec.location}:{spec.tfds_split} "
                f"(no prepared dataset under {base}): {fix}"
            )
    info_path = found[0] / "dataset_info.json"
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
        splits = [str(sp["name"]) for sp in info.get("splits", [])]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataError(
            f"cannot open TFDS source tfds:{spec.location}: {info_path} is "
            f"unreadable ({type(e).__name__}): {fix}"
        ) from None
    for part in spec.tfds_split.split("+"):
        name = part.split("[")[0].strip()
        if name not in splits:
            raise DataError(
                f"TFDS source tfds:{spec.location} has no split {name!r} (it has "
                f"{splits}): write tfds:{spec.location}:SPLIT with one of them"
            )
