"""How lladax writes: the destination rule (absent or empty, or its own output and --overwrite)
and the atomic write."""

import os

import pytest

from lladax.files import DestinationError, atomic_write, check_destination, same_location

RULE = dict(markers=("manifest.json",), what="prepared data", flag="--out")


def test_absent_or_empty_directory_is_free(tmp_path):
    assert check_destination(tmp_path / "new", **RULE) is False
    (tmp_path / "empty").mkdir()
    assert check_destination(tmp_path / "empty", **RULE) is False


@pytest.mark.parametrize("overwrite", [False, True])
def test_foreign_directory_is_refused_even_with_overwrite(tmp_path, overwrite):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(
        DestinationError,
        match=r"is not empty and is not prepared data written "
        r"by lladax \(no manifest.json\)",
    ):
        check_destination(tmp_path, overwrite=overwrite, **RULE)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_own_output_needs_overwrite_or_allow_own(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(
        DestinationError,
        match="already holds prepared data: pass a new directory, or --overwrite to replace it",
    ):
        check_destination(tmp_path, **RULE)
    assert check_destination(tmp_path, overwrite=True, **RULE) is True
    assert check_destination(tmp_path, allow_own=True, **RULE) is True


def test_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(DestinationError, match="--out .* is a file, not a directory"):
        check_destination(tmp_path / "f", overwrite=True, **RULE)


def test_same_location_sees_links_and_nesting(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    os.symlink(tmp_path / "a", tmp_path / "link")
    assert same_location(tmp_path / "a", tmp_path / "link")
    assert same_location(tmp_path / "a", tmp_path / "a" / "b")
    assert same_location(tmp_path / "a" / "b" / "..", tmp_path / "a")
    assert not same_location(tmp_path / "a", tmp_path / "c")


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "out.json"
    assert atomic_write(target, "first") == target  # parents created, str encoded
    assert target.read_text() == "first" and oct(target.stat().st_mode & 0o777) == "0o644"

    def torn(fd, data):  # the process dies halfway through writing the new content
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fdopen", lambda fd, mode: _Boom(fd, torn))
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, b"second")
    assert target.read_text() == "first"  # the old file is intact ...
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]  # ... no temp left


class _Boom:
    def __init__(self, fd, write):
        self.fd, self.write_fn = fd, write

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        os.close(self.fd)

    def write(self, data):
        self.write_fn(self.fd, data)
