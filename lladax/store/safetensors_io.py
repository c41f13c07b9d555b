"""Safetensors files read and written directly (bf16 included; no torch, no safetensors package).

Reading is planned from the headers alone (`scan_dir`), so a missing shard, a truncated file or a
wrong tensor name is reported before any weight is read. Tensors are then read one at a time with
plain file reads (`read_tensor`): no memory map is held, so host memory is one tensor, not a
mapped shard. Writing streams too: `ShardWriter` writes the header from the planned shapes first,
then each tensor as it arrives, into a temporary file renamed on success (atomic per file).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

ST_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
ST_NAMES = {np.dtype(v): k for k, v in ST_DTYPES.items()}
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
_REDOWNLOAD = "re-download it (huggingface-cli download <repo> --local-dir <dir>) or re-convert it"


class CheckpointFormatError(ValueError):
    """A checkpoint file is missing, corrupt or does not match its config."""


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: `file`, absolute byte `offset`, `nbytes`, numpy `dtype`, `shape`."""

    name: str
    file: Path
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int
    nbytes: int


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """(header without __metadata__, byte offset of the data section) of one safetensors file."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            raw_len = f.read(8)
            if len(raw_len) != 8:
                raise CheckpointFormatError(
                    f"{path} is truncated (no safetensors header): {_REDOWNLOAD}"
                )
            (n,) = struct.unpack("<Q", raw_len)
            if n > size - 8:
                raise CheckpointFormatError(
                    f"{path} is truncated or corrupt (header length {n} "
                    f"exceeds the file): {_REDOWNLOAD}"
                )
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise CheckpointFormatError(f"safetensors file {path} not found: {_REDOWNLOAD}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointFormatError(
            f"{path} is corrupt (unreadable safetensors header): {_REDOWNLOAD}"
        ) from None
    if not isinstance(header, dict):
        raise CheckpointFormatError(
            f"{path} is corrupt (header is not a JSON object): {_REDOWNLOAD}"
        )
    header.pop("__metadata__", None)
    return header, 8 + n


def file_tensors(path: Path) -> dict[str, TensorInfo]:
    """Every tensor of one file, checked against the file size (detects truncated downloads)."""
    header, start = read_header(path)
    size = os.path.getsize(path)
    out = {}
    for name, info in header.items():
        try:
            dtype = np.dtype(ST_DTYPES[info["dtype"]])
            shape = tuple(int(s) for s in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointFormatError(
                f"{path} is corrupt (bad header entry for {name}: {info!r}): {_REDOWNLOAD}"
            ) from None
        if end - begin != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise CheckpointFormatError(
                f"{path} is corrupt (tensor {name} has {end - begin} "
                f"bytes for shape {shape}): {_REDOWNLOAD}"
            )
        if start + end > size:
            raise CheckpointFormatError(
                f"{path} is truncated: tensor {name} ends at byte {start + end} but the file has "
                f"{size} bytes (interrupted download?): {_REDOWNLOAD}"
            )
        out[name] = TensorInfo(name, path, dtype, shape, start + begin, end - begin)
    return out


def _inside(path: Path, file: Path) -> bool:
    """`file` (links resolved) lies inside the checkpoint directory `path`, or, for a Hugging
    Face cache snapshot (`.../snapshots/<rev>/` whose files link to `../../blobs/<sha>`), inside
    that cache's blobs/ directory."""
    real, root = file.resolve(), path.resolve()
    if real.is_relative_to(root):
        return True
    return root.parent.name == "snapshots" and real.is_relative_to(root.parent.parent / "blobs")


def _checked_shard(path: Path, index: Path, name: Any) -> Path:
    """The file an index entry names, refused unless it is a relative path that stays inside
    the checkpoint directory (no absolute path, no `..`, no link leading out)."""
    if not isinstance(name, str) or not name:
        raise CheckpointFormatError(
            f"{index} is corrupt (shard name {name!r} is not a file name): re-download it"
        )
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts or not _inside(path, path / rel):
        raise CheckpointFormatError(
            f"{index} names shard {name!r}, which lies outside {path}: refusing to read it; "
            "shards must be files inside the checkpoint directory (re-download the index)"
        )
    return path / rel


def scan_dir(path: Path) -> dict[str, TensorInfo]:
    """name -> TensorInfo for a HF directory (single `model.safetensors` or a sharded index)."""
    index = path / INDEX_NAME
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            assert isinstance(weight_map, dict)
        except (json.JSONDecodeError, KeyError, TypeError, AssertionError):
            raise CheckpointFormatError(
                f"{index} is corrupt (no weight_map): re-download it"
            ) from None
        files = sorted(
            {str(_checked_shard(path, index, f).relative_to(path)) for f in weight_map.values()}
        )
        absent = [f for f in files if not (path / f).is_file()]
        if absent:
            raise CheckpointFormatError(
                f"{index} lists shard(s) {absent} that are missing from {path}: the download is "
                f"incomplete; {_REDOWNLOAD}"
            )
        out: dict[str, TensorInfo] = {}
        for file in files:
            tensors = file_tensors(path / file)
            listed = [n for n, f in weight_map.items() if str(Path(f)) == file]
            lacking = [n for n in listed if n not in tensors]
            if lacking:
                raise CheckpointFormatError(
                    f"{path / file} lacks {len(lacking)} tensor(s) that {INDEX_NAME} places there "
                    f"(first: {lacking[0]}): the shard is from another checkpoint; {_REDOWNLOAD}"
                )
            out.update({n: tensors[n] for n in listed})
        return out
    if (path / SINGLE_NAME).exists():
        if not _inside(path, path / SINGLE_NAME):
            raise CheckpointFormatError(
                f"{path / SINGLE_NAME} is a link to {(path / SINGLE_NAME).resolve()}, outside "
                f"{path}: refusing to read it; put the weights file inside the directory"
            )
        return file_tensors(path / SINGLE_NAME)
    raise CheckpointFormatError(
        f"no {SINGLE_NAME} or {INDEX_NAME} in {path}: point at a Hugging Face LLaDA directory "
        "(convert .bin checkpoints to safetensors first)"
    )


def aligned_empty(shape: Sequence[int], dtype: Any, align: int = 64) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on an `align`-byte boundary (the
    CPU backend of JAX can then adopt the buffer instead of copying it)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + align, np.uint8)
    start = -raw.ctypes.data % align
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def read_tensor(info: TensorInfo) -> np.ndarray:
    """One tensor as a fresh numpy array (a plain read: nothing stays mapped afterwards)."""
    out = aligned_empty(info.shape, info.dtype)
    with open(info.file, "rb") as f:
        f.seek(info.offset)
        if f.readinto(out.reshape(-1).view(np.uint8).data) != info.nbytes:
            raise CheckpointFormatError(
                f"{info.file} is truncated at tensor {info.name}: {_REDOWNLOAD}"
            )
    return out


def read_transposed(
    info: TensorInfo, dtype: Any = None, block_bytes: int = 16 * 2**20
) -> np.ndarray:
    """A 2-D tensor [out, in] read as its C-contiguous transpose [in, out] in `dtype`.

    Rows are read in blocks of about `block_bytes` and transposed into the result, so host memory
    is the result plus one block, instead of the tensor, its transpose and its cast together.
    """
    rows, cols = info.shape
    out = aligned_empty((cols, rows), info.dtype if dtype is None else dtype)
    step = max(1, block_bytes // max(1, cols * info.dtype.itemsize))
    with open(info.file, "rb") as f:
        f.seek(info.offset)
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            buf = np.empty((r1 - r0, cols), info.dtype)
            if f.readinto(buf.reshape(-1).view(np.uint8).data) != buf.nbytes:
                raise CheckpointFormatError(
                    f"{info.file} is truncated at tensor {info.name}: {_REDOWNLOAD}"
                )
            out[:, r0:r1] = buf.T
    return out


_SIZE_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_size(size: int | str) -> int:
    """Bytes of a Hugging Face size string: "5GB" = 5·10⁹, "2GiB" = 2·2³⁰, or an int."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(size))
    unit = m.group(2).upper() if m else None
    if m is None or unit not in _SIZE_UNITS:
        raise ValueError(f"cannot read shard size {size!r}: write e.g. '5GB', '500MB' or '2GiB'")
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


def plan_shards(sizes: Sequence[tuple[str, int]], max_bytes: int) -> list[list[str]]:
    """Group (name, nbytes) in order into shards of at most `max_bytes` (a bigger tensor alone)."""
    shards: list[list[str]] = [[]]
    total = 0
    for name, nbytes in sizes:
        if shards[-1] and total + nbytes > max_bytes:
            shards.append([])
            total = 0
        shards[-1].append(name)
        total += nbytes
    return shards


class ShardWriter:
    """Stream tensors into one safetensors file whose header is known up front.

    `specs` = [(name, dtype, shape)] in file order; call `write(name, arr)` in the same order, then
    `close()`; the file appears under its final name only when every tensor was written.
    """

    def __init__(self, path: Path, specs: Iterable[tuple[str, np.dtype, tuple[int, ...]]]):
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        self._order: list[tuple[str, np.dtype, tuple[int, ...]]] = []
        offset = 0
        for name, dtype, shape in specs:
            nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            header[name] = {
                "dtype": ST_NAMES[np.dtype(dtype)],
                "shape": list(shape),
                "data_offsets": [offset, offset + nbytes],
            }
            self._order.append((name, np.dtype(dtype), tuple(shape)))
            offset += nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # data section 8-byte aligned, as the reference writer
        self.path = path
        self._tmp = path.with_name(path.name + ".tmp")
        self._f = open(self._tmp, "wb")  # noqa: SIM115 (closed in close/abort)
        self._f.write(struct.pack("<Q", len(blob)) + blob)
        self._next = 0

    def write(self, name: str, arr: np.ndarray) -> None:
        want_name, dtype, shape = self._order[self._next]
        if name != want_name or arr.dtype != dtype or tuple(arr.shape) != shape:
            raise ValueError(
                f"ShardWriter expected {want_name} {dtype} {shape}, got {name} "
                f"{arr.dtype} {tuple(arr.shape)}"
            )
        self._f.write(np.ascontiguousarray(arr).reshape(-1).view(np.uint8).data)
        self._next += 1

    def close(self) -> None:
        if self._next != len(self._order):
            self.abort()
            raise ValueError(f"{self.path}: {self._next} of {len(self._order)} tensors written")
        self._f.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self._f.close()
        self._tmp.unlink(missing_ok=True)


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """Write a whole dict of tensors to one file atomically."""
    writer = ShardWriter(path, [(n, a.dtype, a.shape) for n, a in tensors.items()])
    try:
        for name, arr in tensors.items():
            writer.write(name, arr)
    except BaseException:
        writer.abort()
        raise
    writer.close()
