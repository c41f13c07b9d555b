"""How lladax writes files: the one rule every writer follows before it touches a destination,
and the one atomic write.

A writer (`lladax data prepare`, `lladax convert`, `lladax train`'s workdir) may write into a
directory that does not exist yet or is empty. A directory that already holds files is the
writer's own only if it carries the writer's MARKER (a file or directory name the writer always
creates there: `manifest.json` for prepared data, `lladax_export.json` for a converted model,
`checkpoints/` or `metrics.jsonl` for a training run). Replacing one of its own outputs needs
the user's explicit `--overwrite`; anything else — a home directory, a training run handed to
`convert`, a Hugging Face download — is refused with a one-line error and left untouched.

`atomic_write` puts a file in place whole or not at all (a temporary file beside it, renamed), so
a kill never leaves a torn file nor destroys the previous one.

Nothing here imports JAX: the CLI checks destinations before any device or compiler starts.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class DestinationError(ValueError):
    """A destination is not safe to write; the message names it and the fix."""


def _holds_files(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def check_destination(
    path: str | os.PathLike,
    *,
    markers: Sequence[str],
    what: str,
    flag: str,
    overwrite: bool = False,
    allow_own: bool = False,
) -> bool:
    """Check that `path` may be written by the writer whose outputs carry one of `markers`.

    Returns True when `path` is an existing output of this writer (the caller replaces or
    extends it), False when it is absent or empty. Raises DestinationError when `path` is a
    file, or a non-empty directory that is not the writer's own, or the writer's own but
    neither `overwrite` (the user passed `--overwrite`) nor `allow_own` (the writer extends
    its own output in place, as a resumed training run does) permits touching it.

    `what` names the output in the message ("prepared data"); `flag` is the option that chose
    the path (`--out`), so the error names what to change.
    """
    p = Path(os.path.expanduser(os.fspath(path)))
    if p.exists() and not p.is_dir():
        raise DestinationError(f"{flag} {p} is a file, not a directory: pass a new directory")
    if not _holds_files(p):
        return False
    own = [m for m in markers if (p / m).exists()]
    if not own:
        raise DestinationError(
            f"{flag} {p} is not empty and is not {what} written by lladax (no "
            f"{' or '.join(markers)}): refusing to write into it; pass a new or empty directory"
        )
    if not (overwrite or allow_own):
        raise DestinationError(
            f"{flag} {p} already holds {what}: pass a new directory, or --overwrite to replace it"
        )
    return True


def same_location(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when `a` and `b` name the same file or directory (links and `..` resolved), or one
    lies inside the other — reading one while writing the other would corrupt the source."""
    ra = Path(os.path.expanduser(os.fspath(a))).resolve()
    rb = Path(os.path.expanduser(os.fspath(b))).resolve()
    return ra == rb or ra.is_relative_to(rb) or rb.is_relative_to(ra)


def atomic_write(path: Any, payload: bytes | str) -> Any:
    """Write `payload` (str is UTF-8 encoded) to `path` via a temporary file beside it and a
    rename, creating missing parent directories; returns `path`. `path` may be a local path or
    an `etils.epath.Path`; an object-store URL (`gs://...`) is written directly, since object
    stores replace an object atomically by themselves."""
    data = payload.encode() if isinstance(payload, str) else payload
    if "://" in os.fspath(path):
        path.write_bytes(data)
        return path
    local = Path(os.fspath(path))
    local.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=local.parent, prefix=f".{local.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, local)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
