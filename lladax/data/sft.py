"""Supervised fine-tuning batches: tokenised chat samples (`lladax.data.chat`) -> bucketed batches.

Each sample (prompt ids, answer ids ending in EOT; see `chat.dialogue_samples`) is padded with
EOS (at least one)::

    tokens         = [prompt ........ | answer ... EOT | EOS EOS ... EOS]
    prompt_lengths = len(prompt)                 (never masked; the rest is the loss's answer_len)

EOS padding is a target like any other (reference.md §3): it teaches the model to end its answer.
A prompt too long for ``seq_len`` is truncated from the LEFT (the recent turns matter most) and
counted; a sample whose answer alone leaves no room for one prompt token is dropped and counted.

Batches (`make_sft_batches`): each sample goes to the smallest of a few bucket lengths that holds
it (`choose_buckets`: at most `num_buckets` lengths from the grid 16, 24, 32, 48, 64, 96, ...,
seq_len, picked to minimise the total padded length of the data set); each epoch, every bucket is
shuffled and cut into full batches, leftovers moving up to the next bucket, and the batch order
is shuffled. So a batch of short samples costs its bucket length, not ``seq_len``, and the jitted
train step compiles at most `num_buckets` programs. Elements are ``{"tokens": int32 [batch, L],
"prompt_lengths": int32 [batch]}`` with L one of the bucket lengths; the grain iterator resumes
exactly with ``get_state()`` / ``set_state()``, and the same seed gives the same batches.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lladax.batching import bucket_length
from lladax.data import sources
from lladax.data.chat import Samples, load_samples
from lladax.data.tokenizer import Tokenizer

log = logging.getLogger(__name__)


# --- fitting, buckets, batches ------------------------------------------------------------------
def answer_span(answer_len: np.ndarray, min_answer_len: int = 0) -> np.ndarray:
    """int64 [n]: positions each sample needs after its prompt: answer + at least one EOS, and at
    least `min_answer_len` (the EOS padding fills the rest)."""
    return np.maximum(answer_len.astype(np.int64) + 1, min_answer_len)


def fit_to_length(
    samples: Samples, seq_len: int, mask_id: int | None = None, min_answer_len: int = 0
) -> tuple[Samples, dict[str, int]]:
    """Samples that fit ``seq_len`` with at least one EOS after the answer and at least
    `min_answer_len` positions after the prompt (`answer_span`); the rules of `fit_cuts`."""
    span = answer_span(samples.answer_len, min_answer_len)
    end = samples.start + samples.prompt_len + samples.answer_len
    has_mask = holds_token(samples.tokens, samples.start, end, mask_id)
    keep, cut, stats = fit_cuts(samples.prompt_len, span, has_mask, seq_len)
    fitted = Samples(
        samples.tokens,
        (samples.start + cut)[keep],
        (samples.prompt_len - cut)[keep].astype(np.int32),
        samples.answer_len[keep],
    )
    return fitted, stats


def holds_token(
    tokens: np.ndarray, start: np.ndarray, end: np.ndarray, token_id: int | None
) -> np.ndarray:
    """bool [n]: whether ``tokens[start[i] : end[i]]`` holds `token_id` (all False if None)."""
    if token_id is None:
        return np.zeros(len(start), bool)
    seen = np.concatenate([[0], np.cumsum(tokens == token_id)])
    return seen[end] > seen[start]


def fit_cuts(
    prompt_len: np.ndarray, span: np.ndarray, has_mask: np.ndarray, seq_len: int
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """(keep bool [n], cut int [n], stats): which samples fit ``seq_len`` and how many prompt
    tokens each kept one loses from the LEFT, given each sample's answer `span` [n].

    Too-long prompts are cut (``truncated_prompts``); samples whose span leaves no room for one
    prompt token are dropped (``dropped_long_answers``), as are samples holding the mask id
    (`has_mask` [n]; ``dropped_mask_token``: a literal mask token would be read as noise).
    """
    total = prompt_len.astype(np.int64) + span
    room = seq_len - span
    keep = room >= 1
    dropped_mask = int(np.sum(has_mask & keep))
    keep &= ~has_mask
    cut = np.where(keep, np.maximum(total - seq_len, 0), 0)
    stats = {
        "samples": int(keep.sum()),
        "truncated_prompts": int(np.sum(cut > 0)),
        "dropped_long_answers": int(np.sum(room < 1)),
        "dropped_mask_token": dropped_mask,
    }
    return keep, cut, stats


def bucket_grid(seq_len: int) -> list[int]:
    """Candidate lengths: `batching.bucket_length`'s 16, 24, 32, 48, 64, 96, ... below seq_len,
    then seq_len."""
    grid, c = [], bucket_length(1)
    while c < seq_len:
        grid.append(c)
        c = bucket_length(c + 1)
    return [*grid, seq_len]


def choose_buckets(lengths: np.ndarray, seq_len: int, num_buckets: int) -> list[int]:
    """At most `num_buckets` lengths from `bucket_grid(seq_len)`, the largest the first that
    holds every sample, minimising Σ over samples of the smallest chosen length >= its length.

    Exact dynamic programme over the grid: f[m][i] = least cost of the samples up to grid[i]
    using m buckets with grid[i] the largest; ties go to fewer buckets (fewer compilations).
    """
    if num_buckets < 1:
        raise ValueError(f"num_buckets must be >= 1, got {num_buckets}")
    grid = np.asarray(bucket_grid(seq_len), np.int64)
    if len(lengths):  # the largest bucket: the first grid length that holds every sample
        grid = grid[: int(np.searchsorted(grid, np.max(lengths))) + 1]
    counts = np.bincount(np.searchsorted(grid, lengths), minlength=len(grid))[: len(grid)]
    cum = np.concatenate([[0], np.cumsum(counts)])  # samples in grid slots [0, i) = cum[i]
    n = len(grid)
    inf = float("inf")
    f = [[inf] * n for _ in range(num_buckets + 1)]
    back = [[-1] * n for _ in range(num_buckets + 1)]
    for i in range(n):
        f[1][i] = float(grid[i] * cum[i + 1])
    for m in range(2, num_buckets + 1):
        for i in range(n):
            for j in range(i):
                cost = f[m - 1][j] + float(grid[i] * (cum[i + 1] - cum[j + 1]))
                if cost < f[m][i]:
                    f[m][i], back[m][i] = cost, j
    best_m = min(range(1, num_buckets + 1), key=lambda m: (f[m][n - 1], m))
    chosen, i, m = [], n - 1, best_m
    while i >= 0 and m >= 1:
        chosen.append(int(grid[i]))
        i, m = back[m][i], m - 1
    return sorted(chosen)


def collate(
    pairs: Sequence[tuple[Any, Any]], length: int, eos_id: int, offsets: Sequence[int] | None = None
) -> dict[str, np.ndarray]:
    """(prompt, answer) id pairs -> {"tokens": int32 [n, length] (EOS-padded on the right),
    "prompt_lengths": int32 [n]}.

    `offsets` [n]: row r starts with ``offsets[r]`` EOS tokens, which count as prompt (never
    masked, not in the loss): ``[EOS * k | prompt | answer | EOS ...]``.
    """
    tokens = np.full((len(pairs), length), eos_id, np.int32)
    prompt_lengths = np.empty(len(pairs), np.int32)
    for r, (prompt, answer) in enumerate(pairs):
        k = 0 if offsets is None else int(offsets[r])
        p, a = len(prompt), len(answer)
        if k + p + a > length or k < 0:
            raise ValueError(
                f"sample {r} has {p + a} tokens after an offset of {k}: it does not "
                f"fit the length {length}"
            )
        tokens[r, k : k + p], tokens[r, k + p : k + p + a] = prompt, answer
        prompt_lengths[r] = k + p
    return {"tokens": tokens, "prompt_lengths": prompt_lengths}


class BatchPlanner:
    """Index -> batch. Batch ``i`` is batch ``i % per_epoch`` of epoch ``i // per_epoch``'s plan;
    a plan is a pure function of (seed, epoch), so any index is reproducible (grain resumes by
    index)."""

    def __init__(
        self,
        samples: Samples,
        bucket_of: np.ndarray,
        buckets: list[int],
        batch_size: int,
        group: int,
        shard: int,
        seed: int,
        eos_id: int,
        span: np.ndarray | None = None,
    ) -> None:
        self.samples, self.bucket_of, self.buckets = samples, bucket_of, buckets
        self.batch_size, self.group, self.shard = batch_size, group, shard
        self.seed, self.eos_id = seed, eos_id
        self.span = span  # answer_span per sample: random offsets on, else None
        self._plans: dict[int, list[tuple[np.ndarray, int]]] = {}  # the current and last epoch
        self.per_epoch = len(self._plan(0))

    def _plan(self, epoch: int) -> list[tuple[np.ndarray, int]]:
        if epoch not in self._plans:
            if len(self._plans) >= 2:
                del self._plans[min(self._plans)]
            self._plans[epoch] = self._make_plan(epoch)
        return self._plans[epoch]

    def _make_plan(self, epoch: int) -> list[tuple[np.ndarray, int]]:
        rng = np.random.default_rng([self.seed, epoch])
        batches, carry = [], np.zeros(0, np.int64)
        for b in range(len(self.buckets)):
            idx = np.concatenate([carry, np.flatnonzero(self.bucket_of == b)])
            idx = rng.permutation(idx)
            n_full = len(idx) // self.group
            batches += [(idx[k * self.group : (k + 1) * self.group], b) for k in range(n_full)]
            carry = idx[n_full * self.group :]  # shorter samples fit every larger bucket
        return [batches[k] for k in rng.permutation(len(batches))]

    def __call__(self, index: int, _: Any) -> dict[str, np.ndarray]:
        rows, b = self._plan(index // self.per_epoch)[index % self.per_epoch]
        offsets = None
        if self.span is not None:  # one draw for the global batch: hosts agree on every row
            free = self.buckets[b] - self.samples.prompt_len[rows] - self.span[rows]
            offsets = np.random.default_rng([self.seed, index, 1]).integers(0, free + 1)
        part = slice(self.shard * self.batch_size, (self.shard + 1) * self.batch_size)
        return self.collate_rows(
            rows[part], self.buckets[b], None if offsets is None else offsets[part]
        )

    def collate_rows(
        self, rows: np.ndarray, length: int, offsets: np.ndarray | None
    ) -> dict[str, np.ndarray]:
        """This process's batch of samples `rows` [batch] at `length` (`collate`)."""
        return collate([self.samples.get(i) for i in rows], length, self.eos_id, offsets)


class SFTBatches:
    """An iterable of SFT batches; ``iter()`` gives a grain iterator with ``get_state()`` /
    ``set_state()``. ``stats`` counts samples, truncations and drops; ``bucket_lengths`` are the
    batch lengths that can occur; ``batches_per_epoch`` is fixed."""

    def __init__(
        self, dataset: Any, stats: dict[str, Any], bucket_lengths: list[int], batches_per_epoch: int
    ) -> None:
        self.dataset, self.stats = dataset, stats
        self.bucket_lengths, self.batches_per_epoch = bucket_lengths, batches_per_epoch

    def __iter__(self) -> Any:
        return iter(self.dataset)


def check_sizes(
    batch_size: int, seq_len: int, min_answer_len: int, process_index: int, process_count: int
) -> None:
    """One-line ValueErrors for batch and row sizes no SFT batch can have."""
    if batch_size <= 0 or seq_len <= 1:
        raise ValueError(
            f"batch_size={batch_size} and seq_len={seq_len} must be positive (seq_len >= 2)"
        )
    if not 0 <= min_answer_len < seq_len:
        raise ValueError(
            f"min_answer_len={min_answer_len} must be in [0, seq_len={seq_len}): "
            "lower it or raise seq_len"
        )
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count})")


def _plan_stats(planner: BatchPlanner, total: np.ndarray) -> dict[str, Any]:
    """The buckets, batches per epoch and padding fraction (EOS beyond `answer_span`) of epoch
    0's plan; `total` [samples] is each sample's prompt + answer span."""
    plan = planner._plan(0)
    used = sum(int(total[rows].sum()) for rows, _ in plan)
    padded = sum(planner.buckets[b] * len(rows) for rows, b in plan)
    return {
        "buckets": planner.buckets,
        "batches_per_epoch": planner.per_epoch,
        "padding_fraction": round(1 - used / padded, 4),
    }


def _warn_fitting(stats: dict[str, Any], seq_len: int, what: str, unit: str) -> None:
    """One warning counting the prompts cut and the `unit`s dropped to fit `seq_len`."""
    if stats["truncated_prompts"] or stats["dropped_long_answers"] or stats["dropped_mask_token"]:
        log.warning(
            "%s %s: %d prompts truncated from the left to seq_len=%d, %d %s "
            "dropped (answer too long), %d dropped (literal mask token)",
            what,
            stats["source"],
            stats["truncated_prompts"],
            seq_len,
            stats["dropped_long_answers"],
            unit,
            stats["dropped_mask_token"],
        )


def planned_batches(
    planner: BatchPlanner,
    total: np.ndarray,
    stats: dict[str, Any],
    seq_len: int,
    what: str = "SFT data",
    unit: str = "samples",
) -> SFTBatches:
    """The endless grain dataset of `planner`'s batches; `stats` (fitting counts, source, split)
    gain `_plan_stats` and are warned about once (`_warn_fitting`, naming `what` and `unit`)."""
    import grain

    stats |= _plan_stats(planner, total)
    _warn_fitting(stats, seq_len, what, unit)
    ds = grain.MapDataset.range(planner.per_epoch).repeat(None).map_with_index(planner)
    return SFTBatches(ds, stats, planner.buckets, planner.per_epoch)


def make_sft_batches(
    tokenizer: Tokenizer,
    *,
    source: str,
    seq_len: int,
    batch_size: int,
    seed: int,
    split: str = "train",
    num_buckets: int = 4,
    buckets: Sequence[int] | None = None,
    min_answer_len: int = 0,
    random_offset: bool = False,
    process_index: int = 0,
    process_count: int = 1,
    cache_dir: str | Path | None = None,
) -> SFTBatches:
    """Endless, shuffled, bucketed SFT batches ``{"tokens": int32 [batch_size, L],
    "prompt_lengths": int32 [batch_size]}`` of `source` (chat jsonl or ``"synthetic:..."``).

    L is one of ``buckets`` (default: `choose_buckets` of the data, at most `num_buckets` lengths
    up to `seq_len`; explicit ``buckets`` get `seq_len` added). With several processes every
    host takes its own `batch_size` rows of one global batch, so all hosts agree on L at every
    step. Deterministic in `seed`.

    `min_answer_len`: every row has at least this many positions after its prompt (answer, EOT,
    EOS padding). Set it to the ``gen_length`` the model will be sampled with: the sampler's
    canvas is ``prompt + gen_length`` positions, and a model that was only ever trained on rows
    ending a token or two after the answer has never seen the later positions (its predictions
    there are noise, which the bidirectional sampler commits and then attends to).

    `random_offset`: each row starts with a random number of EOS tokens (uniform in 0 .. the
    room its bucket leaves; they count as prompt), so the length of a row's answer region (all
    positions after its prompt) varies from its `answer_span` to the bucket's remainder instead
    of being the one value its bucket dictates. Where every prompt of a kind has the same length
    (the synthetic tasks) that value is otherwise a constant per task, the model learns to place
    its answer relative to the END of the row, and a sampler canvas of another length
    (``prompt + gen_length``) gets empty or shifted answers (issue 10: copy 0 % at gen_length 8,
    65 % with the canvas stretched to the training rows' length, same model).
    """
    check_sizes(batch_size, seq_len, min_answer_len, process_index, process_count)
    samples = load_samples(tokenizer, source, split, cache_dir=cache_dir)
    fitted, stats = fit_to_length(samples, seq_len, tokenizer.mask_id, min_answer_len)
    span = answer_span(fitted.answer_len, min_answer_len)
    total = fitted.prompt_len.astype(np.int64) + span
    if buckets is None:
        buckets = choose_buckets(total, seq_len, num_buckets)
    else:
        buckets = sorted({int(b) for b in buckets if 0 < int(b) < seq_len} | {seq_len})
    group = batch_size * process_count
    if len(fitted) < group:
        raise sources.DataError(
            f"SFT data {source!r} split {split!r} has {len(fitted)} usable "
            f"samples, fewer than one batch of {group}: add data or lower "
            "train.batch_size"
        )
    bucket_of = np.searchsorted(np.asarray(buckets), total)
    planner = BatchPlanner(
        fitted,
        bucket_of,
        buckets,
        batch_size,
        group,
        process_index,
        seed,
        tokenizer.eos_id,
        span if random_offset else None,
    )
    stats |= {"source": str(source), "split": split}
    return planned_batches(planner, total, stats, seq_len)


__all__ = [
    "BatchPlanner",
    "SFTBatches",
    "answer_span",
    "bucket_grid",
    "check_sizes",
    "choose_buckets",
    "collate",
    "fit_cuts",
    "fit_to_length",
    "holds_token",
    "make_sft_batches",
    "planned_batches",
]
