"""Pack, shuffle, shard and batch tokenised training data with grain; assemble global batches.

Sources (`lladax.data.sources`): ``"embedded"``, ``.txt`` / ``.jsonl`` files and directories,
``tfds:NAME[:SPLIT]``, and ArrayRecord shards written by `prepare` (``lladax data prepare``,
`lladax.data.prepared_writer`). Each text document is split into ``"train"`` / ``"eval"`` by a hash
of its text; prepared shards keep that split in separate files. Token ids come from
`lladax.data.prepared` (the cached token stream of a text source, or prepared shards read
lazily).

Two batch layouts (`make_batches`):

* ``pack=False`` (default, LLaDA's pretraining layout): tokenise every document, append EOS,
  concatenate into one stream, cut it into rows of ``seq_len`` that ignore document boundaries
  (full attention across them), shuffle rows. Elements ``{"tokens": int32 [batch, seq_len]}``.
* ``pack=True``: every document (+ EOS) is its own segment; documents longer than ``seq_len`` are
  cut into pieces (counted: ``it.info["documents_split"]``); segments are shuffled, then packed
  into rows with grain's first-fit packer and padded with the pad id. Elements add
  ``"segment_ids"`` (1, 2, ... per segment in a row, 0 = padding) and ``"positions"`` (0, 1, ...
  restarting in each segment), both int32 ``[batch, seq_len]``, which `transformer.apply` takes
  so that no token attends across a document boundary.

Shuffling is seeded (a fresh permutation per epoch); each JAX process reads a disjoint, equally
sized shard (``ShardByJaxProcess`` semantics); ``workers > 0`` runs the pipeline in that many
grain worker processes. The iterator's ``get_state()`` / ``set_state()`` resume it exactly (with
workers too); `set_state` refuses a state saved by a differently configured pipeline.
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lladax.data import prepared, sources
from lladax.data.prepared import corpus_tokens, token_stream
from lladax.data.sources import EMBEDDED, DataError

if TYPE_CHECKING:
    import grain
    import jax

    from lladax.data.tokenizer import Tokenizer

log = logging.getLogger("lladax.data.pipeline")
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


# --- the grain pipeline -------------------------------------------------------------------------
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


def _shard_options(process_index: int | None, process_count: int | None, shard: Any) -> Any:
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


def _build(
    tokenizer: Tokenizer,
    *,
    source: str | Path,
    split: str,
    seq_len: int,
    batch_size: int,
    seed: int,
    num_epochs: int | None,
    add_eos: bool,
    field: str,
    pack: bool,
    workers: int,
    shard: Any,
    cache_dir: str | Path | None,
) -> tuple[Any, dict[str, Any]]:
    import grain
    import grain.experimental as gx

    # Grain's read threads only add overhead on data in RAM or on local disk (0 threads read
    # prepared shards 3-4x faster here than the default 16); `workers` parallelise instead.
    in_process = grain.ReadOptions(num_threads=0)

    if batch_size <= 0 or seq_len <= 0:
        raise ValueError(f"batch_size and seq_len must be positive, got {batch_size}, {seq_len}")
    if workers < 0:
        raise ValueError(f"data.workers must be >= 0 (0 = in-process), got {workers}")
    spec = sources.parse_source(source)
    info: dict[str, Any] = {"source": str(source), "split": split, "pack": pack}
    where = f"data source {str(source)!r} split {split!r}"
    if spec.tokenized:  # lazy: records are read from disk as the iterator advances
        manifest, files = prepared.prepared_files(spec.location, split)
        prepared.check_prepared(manifest, tokenizer, str(source))
        stats = [manifest["splits"][s] for s in (["train", "eval"] if split == "all" else [split])]
        max_len = max(s["max_len"] for s in stats)
        info.update(
            {k: sum(s[k] for s in stats) for k in ("documents", "documents_split", "tokens")}
        )
        info["split_at"] = manifest["seq_len"]  # prepare cut (and counted) at its --seq-len
        ds = grain.MapDataset.source(prepared.record_source(files))
        ds = _shard(ds, shard, f"{where} records")
        ds = ds.shuffle(seed=seed).repeat(num_epochs).map(_Record())
        it = ds.to_iter_dataset(in_process)
        if pack and max_len > seq_len:
            log.info(
                "%s: records of up to %d tokens are cut to seq_len=%d as they are read "
                "(prepare with --seq-len %d to count them up front)",
                where,
                max_len,
                seq_len,
                seq_len,
            )
            it = gx.FlatMapIterDataset(it, _Pieces(seq_len, max_len))
        if not pack:
            it = gx.ConcatThenSplitIterDataset(it, length_struct={"tokens": seq_len}).map(
                _TokensOnly()
            )
    else:
        stream, starts = corpus_tokens(
            tokenizer, source=source, split=split, field=field, add_eos=add_eos, cache_dir=cache_dir
        )
        spans, n_split = document_spans(starts, seq_len)
        info.update(
            documents=len(starts) - 1, documents_split=n_split, tokens=len(stream), split_at=seq_len
        )
        if not pack:  # the original continuous-stream layout, unchanged
            rows = pack_rows(stream, seq_len)
            if len(rows) == 0:
                raise DataError(
                    f"{where} has {len(stream)} tokens, fewer than one row of "
                    f"seq_len={seq_len}: add data or lower seq_len"
                )
            info["rows"] = len(rows)
            ds = _shard(grain.MapDataset.source(rows), shard, f"{len(rows)} rows")
            ds = ds.shuffle(seed=seed).repeat(num_epochs).map(_Rows())
            ds = ds.batch(batch_size, drop_remainder=True)
            if workers:
                ds = ds.to_iter_dataset(in_process).mp_prefetch(
                    grain.MultiprocessingOptions(workers)
                )
            return ds, info
        if len(spans) == 0:
            raise DataError(f"{where} has no tokens: add data")
        ds = _shard(grain.MapDataset.source(spans), shard, f"{len(spans)} documents")
        it = ds.shuffle(seed=seed).repeat(num_epochs).map(_Span(stream))
        it = it.to_iter_dataset(in_process)
    if info["documents_split"]:
        log.info(
            "%s: %d of %d documents are longer than %d tokens and cut into pieces",
            where,
            info["documents_split"],
            info["documents"],
            info["split_at"],
        )
    if pack:
        it = gx.FirstFitPackIterDataset(
            it,
            length_struct={"tokens": seq_len},
            num_packing_bins=max(PACKING_BINS, batch_size),
            seed=seed,
            padding_struct={"tokens": tokenizer.pad_id},
        ).map(_Packed())
    it = it.batch(batch_size, drop_remainder=True)
    if workers:
        it = it.mp_prefetch(grain.MultiprocessingOptions(workers))
    return it, info


def make_dataset(
    tokenizer: Tokenizer,
    *,
    source: str | Path = EMBEDDED,
    split: str = "train",
    seq_len: int,
    batch_size: int,
    seed: int = 0,
    num_epochs: int | None = None,
    add_eos: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
    cache_dir: str | Path | None = None,
    field: str = "text",
    pack: bool = False,
    workers: int = 0,
    shard: Any = None,
) -> grain.MapDataset | grain.IterDataset:
    """The grain dataset behind `make_batches` (a `MapDataset` for the default unpacked layout of
    a text source without workers, else an `IterDataset`).

    Sharding: ``shard`` (a ``grain.sharding.ShardOptions``), or ``process_index`` /
    ``process_count``, or by default this JAX process's share (``ShardByJaxProcess``). Shards
    interleave (row ``i`` goes to process ``i % count``) and have equal length (the remainder is
    dropped); ``batch_size`` is per process.
    """
    sources.check_split(split)
    return _build(
        tokenizer,
        source=source,
        split=split,
        seq_len=seq_len,
        batch_size=batch_size,
        seed=seed,
        num_epochs=num_epochs,
        add_eos=add_eos,
        field=field,
        pack=pack,
        workers=workers,
        shard=_shard_options(process_index, process_count, shard),
        cache_dir=cache_dir,
    )[0]


def make_batches(
    tokenizer: Tokenizer,
    *,
    source: str | Path = EMBEDDED,
    split: str = "train",
    seq_len: int,
    batch_size: int,
    seed: int = 0,
    num_epochs: int | None = None,
    add_eos: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
    cache_dir: str | Path | None = None,
    field: str = "text",
    pack: bool = False,
    workers: int = 0,
    shard: Any = None,
) -> Any:
    """A checkpointable iterator of batches of int32 ``[batch_size, seq_len]`` arrays:
    ``{"tokens"}``, plus ``{"segment_ids", "positions"}`` when ``pack`` (see module doc).

    ``it.get_state()`` is a JSON-able dict; ``it.set_state(state)`` on a freshly built iterator
    with the same arguments continues exactly where ``state`` was taken (also with ``workers``).
    ``it.info`` holds counts (documents, documents_split, tokens). Arguments as `make_dataset`.
    """
    import grain

    sources.check_split(split)
    shard = _shard_options(process_index, process_count, shard)
    ds, info = _build(
        tokenizer,
        source=source,
        split=split,
        seq_len=seq_len,
        batch_size=batch_size,
        seed=seed,
        num_epochs=num_epochs,
        add_eos=add_eos,
        field=field,
        pack=pack,
        workers=workers,
        shard=shard,
        cache_dir=cache_dir,
    )
    if workers:
        _absl_flags_parsed()
    signature = dict(
        source=str(source),
        split=split,
        field=field,
        seq_len=seq_len,
        batch_size=batch_size,
        seed=seed,
        num_epochs=num_epochs,
        add_eos=add_eos,
        pack=pack,
        workers=workers,
        shard_index=shard.shard_index,
        shard_count=shard.shard_count,
        tokenizer=tokenizer.fingerprint,
    )
    if isinstance(ds, grain.MapDataset):
        ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=0))  # as in `_build`
    return _iterator_class()(iter(ds), signature, info)


def options_from_config(data_config: Any) -> dict[str, Any]:
    """`make_batches` keyword arguments from a run config's ``data`` section."""
    d = data_config
    return dict(
        source=d.source,
        seq_len=d.seq_len,
        seed=d.seed,
        field=d.get("field", "text"),
        pack=bool(d.get("pack", False)),
        workers=int(d.get("workers", 0)),
    )


def _absl_flags_parsed() -> None:
    """grain's worker processes read absl flags, which raise unless parsed (outside app.run)."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS(sys.argv[:1])


@functools.cache
def _iterator_class() -> type:
    import grain

    class PipelineIterator(grain.DatasetIterator):
        """A grain iterator whose state also records the pipeline settings it belongs to."""

        def __init__(self, parent: Any, signature: dict[str, Any], info: dict[str, Any]):
            super().__init__(parent)
            self.signature, self.info = signature, info

        def __next__(self) -> dict[str, np.ndarray]:
            return next(self._parent)

        def get_state(self) -> dict[str, Any]:
            return {"pipeline": self.signature, "grain": self._parent.get_state()}

        def set_state(self, state: dict[str, Any]) -> None:
            if "pipeline" not in state:  # a bare grain state (checkpoints before this wrapper)
                self._parent.set_state(state)
                return
            saved = state["pipeline"]
            diff = {k: (saved.get(k), v) for k, v in self.signature.items() if saved.get(k) != v}
            if diff:
                what = ", ".join(f"{k}={a!r} then, {b!r} now" for k, (a, b) in diff.items())
                raise DataError(
                    f"the data iterator state was saved by another pipeline ({what})"
                    ": resume with the same data settings, batch size and process "
                    "count, or start a new run directory"
                )
            self._parent.set_state(state["grain"])

        def close(self) -> None:
            close = getattr(self._parent, "close", None)
            if close is not None:
                close()

    return PipelineIterator


def eval_batches(
    tokenizer: Tokenizer,
    *,
    source: str | Path = EMBEDDED,
    split: str = "eval",
    seq_len: int,
    batch_size: int,
    max_batches: int | None = None,
    add_eos: bool = True,
    cache_dir: str | Path | None = None,
    field: str = "text",
) -> list[dict[str, np.ndarray]]:
    """The held-out split as a fixed list of ``{"tokens": np.int32 [batch_size, seq_len]}``
    (continuous-stream rows, in order, no shuffle), at most ``max_batches``."""
    stream = token_stream(
        tokenizer, source=source, split=split, add_eos=add_eos, cache_dir=cache_dir, field=field
    )
    rows = pack_rows(stream, seq_len)
    where = f"data source {str(source)!r} split {split!r}"
    if len(rows) == 0:
        raise DataError(
            f"{where} has {len(stream)} tokens, fewer than one row of "
            f"seq_len={seq_len}: add data or lower seq_len"
        )
    n = len(rows) // batch_size
    if max_batches is not None:
        n = min(n, max_batches)
    if n == 0:
        raise DataError(
            f"{where} has {len(rows)} rows of seq_len={seq_len}, fewer than "
            f"batch_size={batch_size}: lower one"
        )
    return [{"tokens": rows[i * batch_size : (i + 1) * batch_size].copy()} for i in range(n)]


# --- global batches -----------------------------------------------------------------------------
def global_batch(
    local_batch: dict[str, np.ndarray], sharding: jax.sharding.NamedSharding
) -> dict[str, jax.Array]:
    """This process's rows ``[local_batch, ...]`` -> global arrays ``[local_batch * processes,
    ...]`` laid out by ``sharding`` (rows of process ``i`` follow those of ``i - 1``); every
    process calls it with its own rows. With one process it is a sharded ``device_put``."""
    import jax

    rows = {k: np.shape(v)[0] for k, v in local_batch.items()}
    if len(set(rows.values())) > 1:
        raise ValueError(f"batch leaves have different row counts {rows}")
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
        for k, v in local_batch.items()
    }
