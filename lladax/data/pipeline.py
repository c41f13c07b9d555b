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

import dataclasses
import functools
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lladax.data import sources
from lladax.data.grain_datasets import DatasetOptions, build, pack_rows, shard_options
from lladax.data.prepared import token_stream
from lladax.data.sources import EMBEDDED, DataError

if TYPE_CHECKING:
    import jax

    from lladax.data.data_config import DataConfig
    from lladax.data.tokenizer import Tokenizer

__all__ = [
    "eval_batches",
    "global_batch",
    "make_batches",
    "options_from_config",
]


def make_batches(
    tokenizer: Tokenizer,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
    shard: Any = None,
    **options: Any,
) -> Any:
    """A checkpointable iterator of batches of int32 ``[batch_size, seq_len]`` arrays:
    ``{"tokens"}``, plus ``{"segment_ids", "positions"}`` when ``pack`` (see module doc).

    ``options`` are the fields of `DatasetOptions` (where, what and how to batch), its defaults
    applying: ``seq_len=`` and ``batch_size=`` are required, e.g. ``source=``, ``pack=`` not.

    Sharding: ``shard`` (a ``grain.sharding.ShardOptions``), or ``process_index`` /
    ``process_count``, or by default this JAX process's share (``ShardByJaxProcess``). Shards
    interleave (row ``i`` goes to process ``i % count``) and have equal length (the remainder is
    dropped); ``batch_size`` is per process.

    ``it.get_state()`` is a JSON-able dict; ``it.set_state(state)`` on a freshly built iterator
    with the same arguments continues exactly where ``state`` was taken (also with ``workers``).
    ``it.info`` holds counts (documents, documents_split, tokens).
    """
    import grain

    opts = DatasetOptions(**options)
    sources.check_split(opts.split)
    shard = shard_options(process_index, process_count, shard)
    ds, info = build(tokenizer, opts, shard)
    if opts.workers:
        _absl_flags_parsed()
    signature = {  # what a saved state must match (the cache directory may move)
        **{k: v for k, v in dataclasses.asdict(opts).items() if k != "cache_dir"},
        "source": str(opts.source),
        "shard_index": shard.shard_index,
        "shard_count": shard.shard_count,
        "tokenizer": tokenizer.fingerprint,
    }
    if isinstance(ds, grain.MapDataset):
        ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=0))  # as in `build`
    return _iterator_class()(iter(ds), signature, info)


def options_from_config(data: DataConfig) -> dict[str, Any]:
    """`make_batches` keyword arguments from a run config's typed ``data`` section."""
    return data.options("source", "seq_len", "seed", "field", "pack", "workers")


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
    seq_len: int,
    batch_size: int,
    max_batches: int | None = None,
    source: str | Path = EMBEDDED,
    split: str = "eval",
    field: str = "text",
    add_eos: bool = True,
    cache_dir: str | Path | None = None,
) -> list[dict[str, np.ndarray]]:
    """The held-out split as a fixed list of ``{"tokens": np.int32 [batch_size, seq_len]}``
    (continuous-stream rows, in order, no shuffle), at most ``max_batches``. The token stream is
    `prepared.token_stream`'s (its arguments after ``max_batches``)."""
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
