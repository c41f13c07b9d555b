"""Text and JSON-lines files read strictly: the bottom layer of every data reader.

Text data must be UTF-8 (`decode_text`): a NUL byte or undecodable bytes mean a binary file or
another encoding, which would otherwise train as garbage, so they are one-line errors naming the
file and byte offset. A ``.txt`` file holds documents separated by blank lines (`read_txt`); a
``.jsonl`` file holds one JSON object per line (`jsonl_lines`, `jsonl_record`), the document
being its ``field`` (`read_jsonl`); `read_file` picks the reader by suffix. `read_head` /
`first_line` read only the start of a file, for the fast checks made before start-up
(`lladax.data.preflight.check_source`, `lladax.data.chat`).

`DataError` is defined here, below every reader, so that all of them can raise it; callers use
it as ``sources.DataError`` or ``data.DataError``.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HEAD_BYTES = 1 << 16  # how much of each file the fast checks read (`read_head`)
_JSON_TYPES = {
    dict: "object",
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


class DataError(ValueError):
    """A data source is missing, empty or malformed; the message names the source and the fix."""


def decode_text(raw: bytes, where: str, *, offset: int = 0, final: bool = True) -> str:
    """``raw`` as UTF-8 text. Text sources must be UTF-8: a NUL byte or undecodable bytes mean a
    binary file (or another encoding), which would otherwise train as garbage, so they raise a
    one-line `DataError` naming ``where`` and the file's byte offset (``offset`` = where ``raw``
    starts in the file). ``final=False`` allows a character cut at the end (a file's head)."""
    nul = raw.find(b"\x00")
    bad = nul if nul >= 0 else None
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(raw, final=final)
    except UnicodeDecodeError as e:
        bad = e.start if bad is None else min(bad, e.start)
    if bad is None:
        return text
    what = "a NUL byte" if bad == nul else "not valid UTF-8"
    raise DataError(
        f"{where}: byte {offset + bad} is {what}, so this is not UTF-8 text (a binary "
        "file, or another encoding): convert it to UTF-8 (e.g. `iconv -t UTF-8`) or "
        "remove it from the source"
    )


def read_txt(path: Path) -> Iterator[str]:
    """The documents of a ``.txt`` file: its blank-line separated paragraphs."""
    raw = path.read_bytes()
    bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    text = decode_text(raw[bom:], str(path), offset=bom)
    for doc in re.split(r"\n[ \t\r]*\n", text):
        if doc.strip():
            yield doc.strip("\n")


def _expect_json(value: Any, kind: type, where: str, expected: str, fix: str) -> None:
    """A one-line `DataError` unless the JSON ``value`` is a ``kind``:
    ``{where}: {expected}, got a JSON {value's type}: {fix}``."""
    if not isinstance(value, kind):
        got = _JSON_TYPES.get(type(value), type(value).__name__)
        raise DataError(f"{where}: {expected}, got a JSON {got}: {fix}")


def jsonl_record(line: str, where: str, what: str) -> dict[str, Any]:
    """One jsonl line -> its JSON object; ``what`` names the expected content in the message."""
    expected = f"expected a JSON object with {what}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(
            f"{where}: {expected} (JSONDecodeError: {e}): fix the line (one JSON object per line)"
        ) from None
    _expect_json(record, dict, where, expected, "write one JSON object per line")
    return record


def jsonl_text(line: str, field: str, where: str) -> str:
    """The text ``field`` of one jsonl line (``where`` = ``file:line`` for the message)."""
    record = jsonl_record(line, where, f"a {field!r} field")
    if field not in record:
        raise DataError(
            f"{where}: expected a JSON object with a {field!r} field (it has "
            f"{sorted(record)[:8]}): fix the line or set data.field (`lladax data "
            "prepare --field`)"
        )
    text = record[field]
    fix = "fix the line or set data.field to a text field"
    _expect_json(text, str, where, f"{field!r} must be a string", fix)
    return text


def jsonl_lines(path: Path) -> Iterator[tuple[str, str]]:
    """(``file:line``, text) of each non-blank line of a jsonl file, strictly UTF-8 decoded."""
    with path.open("rb") as f:
        offset = 0
        for lineno, raw in enumerate(f, 1):
            bom = len(codecs.BOM_UTF8) if lineno == 1 and raw.startswith(codecs.BOM_UTF8) else 0
            where = f"{path}:{lineno}"
            line = decode_text(raw[bom:], where, offset=offset + bom)
            offset += len(raw)
            if line.strip():
                yield where, line


def read_jsonl(path: Path, field: str) -> Iterator[str]:
    """The documents of a ``.jsonl`` file: each line's non-blank ``field``."""
    for where, line in jsonl_lines(path):
        text = jsonl_text(line, field, where)
        if text.strip():
            yield text


def read_file(path: Path, field: str = "text") -> Iterator[str]:
    """The documents of one ``.jsonl`` (its ``field``) or ``.txt`` file, read lazily."""
    return read_jsonl(path, field) if path.suffix == ".jsonl" else read_txt(path)


# --- the head of a file, for fast checks --------------------------------------------------------
def read_head(path: Path) -> tuple[str, bool]:
    """(the first `HEAD_BYTES` of a file as strict UTF-8, whether that is the whole file)."""
    try:
        with path.open("rb") as f:
            raw = f.read(HEAD_BYTES + 1)
    except OSError as e:
        raise DataError(
            f"cannot read {path} ({e.strerror}): fix its permissions or remove it from the source"
        ) from None
    whole = len(raw) <= HEAD_BYTES
    raw = raw[:HEAD_BYTES]
    bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    return decode_text(raw[bom:], str(path), offset=bom, final=whole), whole


def first_line(path: Path) -> tuple[str, str] | None:
    """(``file:line``, text) of a jsonl file's first non-blank line, if it fits in the head."""
    text, whole = read_head(path)
    lines = text.split("\n")
    for lineno, line in enumerate(lines if whole else lines[:-1], 1):
        if line.strip():
            return f"{path}:{lineno}", line
    return None
