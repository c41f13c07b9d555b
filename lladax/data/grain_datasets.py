"""The grain datasets behind `lladax.data.pipeline`: a source's tokens as rows or document
segments, sharded per process, shuffled, packed and batched.

`build` makes the dataset that `pipeline.make_batches` iterates, plus counts of what it read
(the batch layouts are described in the pipeline's module doc). The maps are module-level
classes, so that grain's worker processes can pickle them.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lladax.data import prepared, sources
from lladax.data.prepared import corpus_tokens
from lladax.data.sources import EMBEDDED, DataError

if TYPE_CHECKING:
    import grain

    from lladax.data.tokenizer import Tokenizer

log = logging.getLogger("lladax.data.pipeline")  # what it logs is the pipeline's news
PACKING_BINS = 64  # first-fit bins per packing round: more bins, less padding (see docs/data.md)


# --- rows and segments --------------------------------------------------------------------------
def pack_rows(stream: np.ndarray, seq_len: int) -> np.ndarray:
    """Cut a stream ``[n]`` into rows ``[n // seq_len, seq_len]`` (the tail is dropped)."""
    if seq_len <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    n_rows = len(stream) // seq_len
    return stream[: n_rows * seq_len].reshape(n_rows, seq_len)


def document_spans(starts: np.ndarray, seq_len: int) -> tuple[np.ndarray, int]:
    """Segments of at most ``seq_len`` tokens: (spans int64 ``[n_segments, 2]`` of [start, end)
    stream offsets, number of documents longer than ``seq_len`` that were cut into pieces)."""
    if seq_len <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    lengths = np.diff(starts)
    pieces = -(-lengths // seq_len)
    doc = np.repeat(np.arange(len(lengths)), pieces)
    first_piece = np.repeat(np.cumsum(pieces) - pieces, pieces)
    begin = starts[doc] + (np.arange(len(doc)) - first_piece) * seq_len
    end = np.minimum(begin + seq_len, starts[doc + 1])
    return np.stack([begin, end], axis=1), int((pieces > 1).sum())


class _Rows:
    """Map: a row ``[seq_len]`` -> ``{"tokens": row}`` (module level: picklable for workers)."""

    def __call__(self, row: np.ndarray) -> dict[str, np.ndarray]:
        return {"tokens": row}


class _Span:
    """Map: a [start, end) span -> ``{"tokens": stream[start:end]}``."""

    def __init__(self, stream: np.ndarray) -> None:
        self.stream = stream

    def __call__(self, span: np.ndarray) -> dict[str, np.ndarray]:
        return {"tokens": self.stream[span[0] : span[1]]}


class _Record:
    """Map: a prepared ArrayRecord record -> ``{"tokens": int32 [n]}``."""

    def __call__(self, record: bytes) -> dict[str, np.ndarray]:
        return {"tokens": prepared.decode_record(record)}


class _Pieces:
    """FlatMap: a segment longer than ``seq_len`` -> its pieces (prepared with a larger
    ``--seq-len`` than the run's)."""

    def __init__(self, seq_len: int, max_len: int) -> None:
        self.seq_len, self.max_fan_out = seq_len, -(-max_len // seq_len)

    def flat_map(self, element: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        t = element["tokens"]
        return [{"tokens": t[i : i + self.seq_len]} for i in range(0, len(t), self.seq_len)]


class _Packed:
    """Map: grain's packer output -> ``{"tokens", "segment_ids", "positions"}``."""

    def __call__(self, e: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {
            "tokens": e["tokens"],
            "segment_ids": e["tokens_segment_ids"].astype(np.int32),
            "positions": e["tokens_positions"].astype(np.int32),
        }


class _TokensOnly:
    def __call__(self, e: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"tokens": e["tokens"]}


# --- sharding -----------------------------------------------------------------------------------
def _shard(ds: grain.MapDataset, shard: Any, what: str) -> grain.MapDataset:
    """This process's interleaved slice; with ``drop_remainder`` every shard has the same length
    (hosts must agree on the number of steps in a finite epoch)."""
    if shard.shard_count == 1:
        return ds
    n = len(ds) - len(ds) % shard.shard_count if shard.drop_remainder else len(ds)
    ds = ds[:n][shard.shard_index :: shard.shard_count]
    if len(ds) == 0:
        raise DataError(f"{what} are too few for {shard.shard_count} processes: add data")
    return ds


def shard_options(process_index: int | None, process_count: int | None, shard: Any) -> Any:
    """``shard`` if given, else this (or the named) process's equal share of the data."""
    import grain

    if shard is not None:
        return shard
    if process_index is None and process_count is None:
        return grain.sharding.ShardByJaxProcess(drop_remainder=True)
    process_count = 1 if process_count is None else process_count
    process_index = 0 if process_index is None else process_index
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count})")
    return grain.sharding.ShardOptions(process_index, process_count, drop_remainder=True)


# --- the dataset --------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, kw_only=True)
class DatasetOptions:
    """What `build` reads and how it batches it: the keyword arguments of
    `pipeline.make_batches` but the sharding (``seq_len`` and ``batch_size`` have no default)."""

    source: str | Path = EMBEDDED  # a source string of `lladax.data.sources`, or a path
    split: str = "train"  # one of `sources.SPLITS`
    seq_len: int
    batch_size: int  # rows per batch, per process
    seed: int = 0  # of the shuffles (and of the packer)
    num_epochs: int | None = None  # None: repeat forever
    add_eos: bool = True  # EOS after every document
    field: str = "text"  # the text field of .jsonl lines / TFDS records
    pack: bool = False  # one document per segment (the pipeline's module doc)
    workers: int = 0  # grain worker processes (0 = in-process)
    cache_dir: str | Path | None = None  # where token streams are cached

    @property
    def where(self) -> str:
        return f"data source {str(self.source)!r} split {self.split!r}"


def _in_process() -> grain.ReadOptions:
    """Grain's read threads only add overhead on data in RAM or on local disk (0 threads read
    prepared shards 3-4x faster here than the default 16); `workers` parallelise instead."""
    import grain

    return grain.ReadOptions(num_threads=0)


def _prepared_segments(
    tokenizer: Tokenizer, spec: Any, opts: DatasetOptions, shard: Any, info: dict[str, Any]
) -> grain.IterDataset:
    """Records of a prepared directory, read lazily as the iterator advances: segments (cut to
    ``seq_len``) when packing, else rows of ``seq_len`` across record boundaries."""
    import grain
    import grain.experimental as gx

    manifest, files = prepared.prepared_files(spec.location, opts.split)
    prepared.check_prepared(manifest, tokenizer, str(opts.source))
    split = ["train", "eval"] if opts.split == "all" else [opts.split]
    stats = [manifest["splits"][s] for s in split]
    max_len = max(s["max_len"] for s in stats)
    info.update({k: sum(s[k] for s in stats) for k in ("documents", "documents_split", "tokens")})
    info["split_at"] = manifest["seq_len"]  # prepare cut (and counted) at its --seq-len
    ds = _shard(
        grain.MapDataset.source(prepared.record_source(files)), shard, f"{opts.where} records"
    )
    it = ds.shuffle(seed=opts.seed).repeat(opts.num_epochs).map(_Record())
    it = it.to_iter_dataset(_in_process())
    if opts.pack and max_len > opts.seq_len:
        log.info(
            "%s: records of up to %d tokens are cut to seq_len=%d as they are read "
            "(prepare with --seq-len %d to count them up front)",
            opts.where,
            max_len,
            opts.seq_len,
            opts.seq_len,
        )
        it = gx.FlatMapIterDataset(it, _Pieces(opts.seq_len, max_len))
    if not opts.pack:
        length = {"tokens": opts.seq_len}
        it = gx.ConcatThenSplitIterDataset(it, length_struct=length).map(_TokensOnly())
    return it


def _stream_rows(stream: np.ndarray, opts: DatasetOptions, shard: Any, info: dict[str, Any]) -> Any:
    """The continuous-stream layout of a text source, batched: a `MapDataset` (an
    `IterDataset` with workers)."""
    import grain

    rows = pack_rows(stream, opts.seq_len)
    if len(rows) == 0:
        raise DataError(
            f"{opts.where} has {len(stream)} tokens, fewer than one row of "
            f"seq_len={opts.seq_len}: add data or lower seq_len"
        )
    info["rows"] = len(rows)
    ds = _shard(grain.MapDataset.source(rows), shard, f"{len(rows)} rows")
    ds = ds.shuffle(seed=opts.seed).repeat(opts.num_epochs).map(_Rows())
    ds = ds.batch(opts.batch_size, drop_remainder=True)
    if opts.workers:
        ds = ds.to_iter_dataset(_in_process()).mp_prefetch(
            grain.MultiprocessingOptions(opts.workers)
        )
    return ds


def _packed_batches(
    it: grain.IterDataset, tokenizer: Tokenizer, opts: DatasetOptions, info: dict[str, Any]
) -> grain.IterDataset:
    """Segments (or rows) -> batches: packed first-fit into padded rows when ``pack``."""
    import grain
    import grain.experimental as gx

    if info["documents_split"]:
        log.info(
            "%s: %d of %d documents are longer than %d tokens and cut into pieces",
            opts.where,
            info["documents_split"],
            info["documents"],
            info["split_at"],
        )
    if opts.pack:
        it = gx.FirstFitPackIterDataset(
            it,
            length_struct={"tokens": opts.seq_len},
            num_packing_bins=max(PACKING_BINS, opts.batch_size),
            seed=opts.seed,
            padding_struct={"tokens": tokenizer.pad_id},
        ).map(_Packed())
    it = it.batch(opts.batch_size, drop_remainder=True)
    if opts.workers:
        it = it.mp_prefetch(grain.MultiprocessingOptions(opts.workers))
    return it


def build(tokenizer: Tokenizer, opts: DatasetOptions, shard: Any) -> tuple[Any, dict[str, Any]]:
    """(the dataset of `opts`'s batches for this ``shard``, counts of what it read: documents,
    documents_split, tokens, split_at and, unpacked text, rows)."""
    import grain

    if opts.batch_size <= 0 or opts.seq_len <= 0:
        raise ValueError(
            f"batch_size and seq_len must be positive, got {opts.batch_size}, {opts.seq_len}"
        )
    if opts.workers < 0:
        raise ValueError(f"data.workers must be >= 0 (0 = in-process), got {opts.workers}")
    spec = sources.parse_source(opts.source)
    info: dict[str, Any] = {"source": str(opts.source), "split": opts.split, "pack": opts.pack}
    if spec.tokenized:
        it = _prepared_segments(tokenizer, spec, opts, shard, info)
        return _packed_batches(it, tokenizer, opts, info), info
    stream, starts = corpus_tokens(
        tokenizer,
        source=opts.source,
        split=opts.split,
        field=opts.field,
        add_eos=opts.add_eos,
        cache_dir=opts.cache_dir,
    )
    spans, n_split = document_spans(starts, opts.seq_len)
    info.update(
        documents=len(starts) - 1,
        documents_split=n_split,
        tokens=len(stream),
        split_at=opts.seq_len,
    )
    if not opts.pack:  # the original continuous-stream layout, unchanged
        return _stream_rows(stream, opts, shard, info), info
    if len(spans) == 0:
        raise DataError(f"{opts.where} has no tokens: add data")
    ds = _shard(grain.MapDataset.source(spans), shard, f"{len(spans)} documents")
    ds = ds.shuffle(seed=opts.seed).repeat(opts.num_epochs).map(_Span(stream))
    return _packed_batches(ds.to_iter_dataset(_in_process()), tokenizer, opts, info), info
