"""Supervised fine-tuning data: chat dialogues -> prompt/answer samples -> bucketed batches.

Sources (`load_dialogues`): a chat-format ``.jsonl`` file (or a directory of them), one dialogue
per line ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``, split into
train / eval by a hash of the dialogue (`data.split_of`); or ``"synthetic:<tasks>"``, the built-in
instruction set of `lladax.instructions` (its own hashed train / eval split).

Samples (`dialogue_samples`), as in the paper: a dialogue gives one sample per assistant turn; the
prompt is everything before that turn rendered with the chat template plus the assistant header
(`tokenizer.apply_chat_template`, exactly what a user's prompt looks like at inference), the
answer is the reply's tokens as they follow that header (`tokenizer.encode_reply`: with the
plain-text template the reply's first piece carries the space after ``Assistant:``, as in the
encoded text of a whole turn) followed by EOT. Each sample is then padded with EOS (at least one)::

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

import dataclasses
import hashlib
import io
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lladax import data, instructions
from lladax.likelihood import bucket_length
from lladax.tokenizer import Tokenizer, apply_chat_template, encode_reply

ROLES = ("system", "user", "assistant")
CHAT_SPECIALS = ("bos", "eos", "eot", "mask")
_CACHE_VERSION = 2  # 2: replies tokenised by `encode_reply`
log = logging.getLogger(__name__)


def check_chat_tokenizer(tokenizer: Tokenizer) -> None:
    """One-line ValueError unless the tokenizer has the ids SFT needs (bos, eos, eot, mask)."""
    special = tokenizer.special_ids()
    missing = [r for r in CHAT_SPECIALS if special.get(r) is None]
    if missing:
        raise ValueError(
            f"tokenizer {tokenizer.name} lacks the chat special token(s) {missing} that SFT needs "
            "(bos/eot frame the chat template, eos pads answers, mask is the diffusion mask): use "
            "the model's own tokenizer (LLaDA's tokenizer.json or 'embedded'), or load it with "
            "HFTokenizer(path, special_tokens={role: '<token>'})")


def dialogue_samples(tokenizer: Tokenizer, messages: Any, where: str = "dialogue"
                     ) -> list[tuple[list[int], list[int]]]:
    """One (prompt ids, answer ids) pair per assistant turn of `messages`.

    prompt = chat template of all earlier turns + the assistant header; answer = the reply's
    tokens as they follow that header (`tokenizer.encode_reply`) + EOT. Raises a one-line
    `data.DataError` (naming `where`) for a malformed dialogue.
    """
    if not isinstance(messages, list) or not messages:
        raise data.DataError(f"{where}: 'messages' must be a non-empty list of "
                             "{'role': ..., 'content': ...} objects")
    for m in messages:
        if not isinstance(m, Mapping) or not isinstance(m.get("content"), str):
            raise data.DataError(f"{where}: each message needs a string 'role' and 'content', "
                                 f"got {m!r}")
        if m.get("role") not in ROLES:
            raise data.DataError(f"{where}: unknown role {m.get('role')!r}: use one of {ROLES}")
    turns = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
    if not turns:
        raise data.DataError(f"{where}: no assistant turn, so nothing to learn: add the "
                             "assistant's reply or remove the dialogue")
    if turns[0] == 0:
        raise data.DataError(f"{where}: the dialogue starts with an assistant turn: put the "
                             "user (or system) message it answers before it")
    eot = tokenizer.eot_id
    return [(apply_chat_template(tokenizer, messages[:k]),
             [*encode_reply(tokenizer, messages[k]["content"]), eot]) for k in turns]


# --- sources ------------------------------------------------------------------------------------
def _read_chat_file(path: Path, split: str) -> list[tuple[str, list]]:
    out = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                messages = json.loads(line)["messages"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise data.DataError(f"{path}:{lineno}: expected a JSON object with a "
                                     f"'messages' list ({type(e).__name__}: {e})") from None
            key = json.dumps(messages, sort_keys=True, ensure_ascii=False)
            if split == "all" or data.split_of(key) == split:
                out.append((f"{path}:{lineno}", messages))
    return out


def load_dialogues(source: str | Path, split: str = "train") -> list[tuple[str, list]]:
    """(where, messages) per dialogue of `source` in `split` (train / eval / all).

    `where` is ``file:line`` for jsonl and ``synthetic:<task>#<i>`` for the built-in set.
    """
    if split not in data.SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {data.SPLITS}")
    if instructions.is_synthetic(source):
        tasks = instructions.parse_source(str(source))
        splits = ["train", "eval"] if split == "all" else [split]
        return [(f"synthetic:{ex.task}#{i}", ex.messages()) for s in splits
                for i, ex in enumerate(instructions.examples(tasks, s))]
    p = Path(source).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"SFT data {p} does not exist: pass a chat .jsonl file (one "
                                "{'messages': [...]} per line), a directory of them, or "
                                "'synthetic:all'")
    files = sorted(p.rglob("*.jsonl")) if p.is_dir() else [p]
    if not files or (not p.is_dir() and p.suffix != ".jsonl"):
        raise data.DataError(f"SFT data {p}: expected a chat .jsonl file or a directory holding "
                             "some")
    dialogues = [d for f in files for d in _read_chat_file(f, split)]
    if not dialogues:
        raise data.DataError(f"SFT data {p} has no dialogues in split {split!r} (eval takes ~2% "
                             "by hash; a tiny file may have none): add data or use split='all'")
    return dialogues


@dataclasses.dataclass(frozen=True)
class Samples:
    """Tokenised samples, flat: sample i is ``tokens[start[i] : start[i] + prompt_len[i] +
    answer_len[i]]`` (prompt then answer)."""

    tokens: np.ndarray      # [n_tokens] int32
    start: np.ndarray       # [n] int64
    prompt_len: np.ndarray  # [n] int32
    answer_len: np.ndarray  # [n] int32

    def __len__(self) -> int:
        return len(self.start)

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(prompt [p], answer [a]) of sample i."""
        s, p, a = int(self.start[i]), int(self.prompt_len[i]), int(self.answer_len[i])
        return self.tokens[s:s + p], self.tokens[s + p:s + p + a]


class _BatchEncoder:
    """A tokenizer stand-in that first records the texts a function encodes (returning []),
    then encodes them all in one `encode_batch` call and replays the results: one batched call
    instead of thousands of single ones (each pays the backend's per-call overhead)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tok, self._ids = tokenizer, None
        self._texts: dict[str, None] = {}

    def __getattr__(self, name: str) -> Any:  # special ids, name, decode, ...
        return getattr(self._tok, name)

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        if self._ids is None:
            self._texts[text] = None
            return []
        ids = self._ids[text]
        return [self._tok.bos_id, *ids] if add_bos else ids

    def resolve(self) -> None:
        texts = list(self._texts)
        self._ids = dict(zip(texts, self._tok.encode_batch(texts), strict=True))


def tokenize_dialogues(tokenizer: Tokenizer, dialogues: Sequence[tuple[str, list]], *,
                       chunk: int = 8192) -> Samples:
    """All samples of `dialogues` (see `dialogue_samples`) as one flat `Samples`."""
    check_chat_tokenizer(tokenizer)
    pieces, prompt_len, answer_len = [], [], []
    for begin in range(0, len(dialogues), chunk):
        part = dialogues[begin:begin + chunk]
        encoder = _BatchEncoder(tokenizer)
        for where, messages in part:  # pass 1 validates and records the texts
            dialogue_samples(encoder, messages, where)  # type: ignore[arg-type]
        encoder.resolve()
        for where, messages in part:
            for prompt, answer in dialogue_samples(encoder, messages, where):  # type: ignore
                pieces += [prompt, answer]
                prompt_len.append(len(prompt))
                answer_len.append(len(answer))
    lengths = np.asarray(prompt_len, np.int64) + np.asarray(answer_len, np.int64)
    start = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    tokens = np.fromiter((t for piece in pieces for t in piece), np.int32, int(lengths.sum()))
    return Samples(tokens, start, np.asarray(prompt_len, np.int32),
                   np.asarray(answer_len, np.int32))


def load_samples(tokenizer: Tokenizer, source: str | Path, split: str = "train", *,
                 cache_dir: str | Path | None = None) -> Samples:
    """`tokenize_dialogues(load_dialogues(source, split))`; jsonl results are cached as ``.npz``
    under ``<cache>/sft`` keyed by tokenizer, source fingerprint and split."""
    if instructions.is_synthetic(source):  # generated in seconds: no cache
        return tokenize_dialogues(tokenizer, load_dialogues(source, split))
    if not Path(source).expanduser().exists():
        load_dialogues(source, split)  # raises the FileNotFoundError with the fix
    key = hashlib.sha256(json.dumps([tokenizer.fingerprint, data.source_fingerprint(source),
                                     split, _CACHE_VERSION]).encode()).hexdigest()[:16]
    path = data.cache_root(cache_dir) / "sft" / f"{key}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                return Samples(**{f.name: z[f.name] for f in dataclasses.fields(Samples)})
        except (OSError, ValueError, KeyError):
            pass  # a corrupt cache file: rebuild it
    samples = tokenize_dialogues(tokenizer, load_dialogues(source, split))
    buf = io.BytesIO()
    np.savez(buf, **dataclasses.asdict(samples))
    data.atomic_write_bytes(path, buf.getvalue())
    return samples


# --- fitting, buckets, batches ------------------------------------------------------------------
def answer_span(answer_len: np.ndarray, min_answer_len: int = 0) -> np.ndarray:
    """int64 [n]: positions each sample needs after its prompt: answer + at least one EOS, and at
    least `min_answer_len` (the EOS padding fills the rest)."""
    return np.maximum(answer_len.astype(np.int64) + 1, min_answer_len)


def fit_to_length(samples: Samples, seq_len: int, mask_id: int | None = None,
                  min_answer_len: int = 0) -> tuple[Samples, dict[str, int]]:
    """Samples that fit ``seq_len`` with at least one EOS after the answer and at least
    `min_answer_len` positions after the prompt (`answer_span`).

    Too-long prompts lose tokens from the left (``truncated_prompts``); samples whose answer span
    leaves no room for one prompt token are dropped (``dropped_long_answers``), as are samples
    holding `mask_id` (``dropped_mask_token``: a literal mask token in the text would be read as
    noise).
    """
    span = answer_span(samples.answer_len, min_answer_len)
    total = samples.prompt_len.astype(np.int64) + span
    room = seq_len - span
    keep = room >= 1
    dropped_mask = 0
    if mask_id is not None:
        seen = np.concatenate([[0], np.cumsum(samples.tokens == mask_id)])
        end = samples.start + samples.prompt_len + samples.answer_len
        has_mask = seen[end] > seen[samples.start]
        dropped_mask = int(np.sum(has_mask & keep))
        keep &= ~has_mask
    cut = np.where(keep, np.maximum(total - seq_len, 0), 0)
    fitted = Samples(samples.tokens, (samples.start + cut)[keep],
                     (samples.prompt_len - cut)[keep].astype(np.int32), samples.answer_len[keep])
    stats = {"samples": int(keep.sum()), "truncated_prompts": int(np.sum(cut > 0)),
             "dropped_long_answers": int(np.sum(room < 1)), "dropped_mask_token": dropped_mask}
    return fitted, stats


def bucket_grid(seq_len: int) -> list[int]:
    """Candidate lengths: `likelihood.bucket_length`'s 16, 24, 32, 48, 64, 96, ... below seq_len,
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
        grid = grid[:int(np.searchsorted(grid, np.max(lengths))) + 1]
    counts = np.bincount(np.searchsorted(grid, lengths), minlength=len(grid))[:len(grid)]
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


def collate(pairs: Sequence[tuple[Any, Any]], length: int, eos_id: int,
            offsets: Sequence[int] | None = None) -> dict[str, np.ndarray]:
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
            raise ValueError(f"sample {r} has {p + a} tokens after an offset of {k}: it does not "
                             f"fit the length {length}")
        tokens[r, k:k + p], tokens[r, k + p:k + p + a] = prompt, answer
        prompt_lengths[r] = k + p
    return {"tokens": tokens, "prompt_lengths": prompt_lengths}


class _Planner:
    """Index -> batch. Batch ``i`` is batch ``i % per_epoch`` of epoch ``i // per_epoch``'s plan;
    a plan is a pure function of (seed, epoch), so any index is reproducible (grain resumes by
    index)."""

    def __init__(self, samples: Samples, bucket_of: np.ndarray, buckets: list[int],
                 batch_size: int, group: int, shard: int, seed: int, eos_id: int,
                 span: np.ndarray | None = None) -> None:
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
            batches += [(idx[k * self.group:(k + 1) * self.group], b) for k in range(n_full)]
            carry = idx[n_full * self.group:]  # shorter samples fit every larger bucket
        return [batches[k] for k in rng.permutation(len(batches))]

    def __call__(self, index: int, _: Any) -> dict[str, np.ndarray]:
        rows, b = self._plan(index // self.per_epoch)[index % self.per_epoch]
        offsets = None
        if self.span is not None:  # one draw for the global batch: hosts agree on every row
            free = self.buckets[b] - self.samples.prompt_len[rows] - self.span[rows]
            offsets = np.random.default_rng([self.seed, index, 1]).integers(0, free + 1)
        part = slice(self.shard * self.batch_size, (self.shard + 1) * self.batch_size)
        return collate([self.samples.get(i) for i in rows[part]], self.buckets[b], self.eos_id,
                       None if offsets is None else offsets[part])


class SFTBatches:
    """An iterable of SFT batches; ``iter()`` gives a grain iterator with ``get_state()`` /
    ``set_state()``. ``stats`` counts samples, truncations and drops; ``bucket_lengths`` are the
    batch lengths that can occur; ``batches_per_epoch`` is fixed."""

    def __init__(self, dataset: Any, stats: dict[str, Any], bucket_lengths: list[int],
                 batches_per_epoch: int) -> None:
        self.dataset, self.stats = dataset, stats
        self.bucket_lengths, self.batches_per_epoch = bucket_lengths, batches_per_epoch

    def __iter__(self) -> Any:
        return iter(self.dataset)


def make_sft_batches(tokenizer: Tokenizer, *, source: str, seq_len: int, batch_size: int,
                     seed: int, split: str = "train", num_buckets: int = 4,
                     buckets: Sequence[int] | None = None, min_answer_len: int = 0,
                     random_offset: bool = False, process_index: int = 0,
                     process_count: int = 1, cache_dir: str | Path | None = None
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
    import grain

    if batch_size <= 0 or seq_len <= 1:
        raise ValueError(f"batch_size={batch_size} and seq_len={seq_len} must be positive "
                         "(seq_len >= 2)")
    if not 0 <= min_answer_len < seq_len:
        raise ValueError(f"min_answer_len={min_answer_len} must be in [0, seq_len={seq_len}): "
                         "lower it or raise seq_len")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count})")
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
        raise data.DataError(f"SFT data {source!r} split {split!r} has {len(fitted)} usable "
                             f"samples, fewer than one batch of {group}: add data or lower "
                             "train.batch_size")
    bucket_of = np.searchsorted(np.asarray(buckets), total)
    planner = _Planner(fitted, bucket_of, buckets, batch_size, group, process_index, seed,
                       tokenizer.eos_id, span if random_offset else None)
    plan = planner._plan(0)
    used = sum(int(total[rows].sum()) for rows, _ in plan)
    padded = sum(buckets[b] * len(rows) for rows, b in plan)
    stats |= {"source": str(source), "split": split, "buckets": buckets,
              "batches_per_epoch": planner.per_epoch,
              "padding_fraction": round(1 - used / padded, 4)}  # EOS beyond answer_span, epoch 0
    if stats["truncated_prompts"] or stats["dropped_long_answers"] or stats["dropped_mask_token"]:
        log.warning("SFT data %s: %d prompts truncated from the left to seq_len=%d, %d samples "
                    "dropped (answer too long), %d dropped (literal mask token)", source,
                    stats["truncated_prompts"], seq_len, stats["dropped_long_answers"],
                    stats["dropped_mask_token"])
    ds = grain.MapDataset.range(planner.per_epoch).repeat(None).map_with_index(planner)
    return SFTBatches(ds, stats, buckets, planner.per_epoch)


__all__ = [
    "ROLES", "SFTBatches", "Samples", "answer_span", "check_chat_tokenizer", "choose_buckets",
    "collate",
    "dialogue_samples", "fit_to_length", "load_dialogues", "load_samples", "make_sft_batches",
    "tokenize_dialogues",
]
