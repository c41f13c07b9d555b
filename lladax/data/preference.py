"""Preference data (DPO / VRPO): (prompt, chosen, rejected) pairs -> bucketed paired batches.

Sources (`load_pairs`): a ``.jsonl`` file or a directory of them, one pair per line::

    {"prompt": str, "chosen": C, "rejected": R}
    {"messages": [...the conversation BEFORE the answer, ending with a user turn...],
     "chosen": C, "rejected": R}

C and R are each a string, an ``{"role": "assistant", "content": str}`` object or a list holding
exactly one such object (the common Hugging Face layout). A malformed row is a one-line
`sources.DataError` naming ``file:line``. Pairs go to train / eval by a hash of the pair
(`sources.split_of`, as SFT dialogues). Or ``"synthetic:<tasks>"`` (`instructions.parse_source`):
each instruction example with chosen = its answer and rejected = `near_miss` of it.

Batches (`make_preference_batches`): each row is laid out exactly as an SFT row (`sft`)::

    chosen   = [prompt ...... | chosen reply ... EOT | EOS EOS ... EOS]
    rejected = [prompt ...... | rejected reply ... EOT | EOS ... EOS]
    prompt_lengths = len(prompt)

The two rows of a pair share the prompt and the row length L, the smallest bucket holding the
prompt and the LONGER answer span; bucketing, shuffling, resuming and multi-process sharding are
SFT's (`sft.BatchPlanner`, `sft.planned_batches`), with a pair in place of a sample.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lladax.data import chat, instructions, sft, sources, textio
from lladax.data.chat import Samples
from lladax.data.sources import DataError

if TYPE_CHECKING:
    from lladax.data.tokenizer import Tokenizer

_FORMS = (
    "write {'prompt': str, 'chosen': str, 'rejected': str} (or 'messages' ending with the user "
    "turn instead of 'prompt') per line"
)
_ANSWER = "a string, an {'role': 'assistant', 'content': str} object or a list of one"


@dataclasses.dataclass(frozen=True)
class PreferencePair:
    """One pair: `messages` is the conversation before the answer (ends with a user turn)."""

    where: str  # file:line, or synthetic:<task>#<i>
    messages: list[dict[str, str]]
    chosen: str
    rejected: str


# --- one jsonl row -> a pair --------------------------------------------------------------------
def _answer(record: dict[str, Any], key: str, where: str) -> str:
    """The reply text of ``record[key]`` (``chosen`` / ``rejected``) in any of the three layouts."""
    if key not in record:
        raise DataError(f"{where}: no {key!r} answer: add {key!r} ({_ANSWER})")
    value = record[key]
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, Mapping):
        if value.get("role") != "assistant" or not isinstance(value.get("content"), str):
            raise DataError(
                f"{where}: {key!r} must be an assistant message with a string 'content', got "
                f"{str(value)[:80]}: write {{'role': 'assistant', 'content': ...}}"
            )
        value = value["content"]
    if not isinstance(value, str):
        got = f"a list of {len(value)}" if isinstance(value, list) else type(value).__name__
        raise DataError(f"{where}: {key!r} must be {_ANSWER}, got {got}: fix the line")
    if not value.strip():
        raise DataError(f"{where}: {key!r} is empty: give the answer text or remove the pair")
    return value


def _prompt_messages(record: dict[str, Any], where: str) -> list[dict[str, str]]:
    """The conversation before the answers: ``prompt`` as one user turn, or ``messages``
    checked as `chat.check_dialogue` does, ending with a user turn."""
    has = [k for k in ("prompt", "messages") if k in record]
    if len(has) != 1:
        state = "both" if has else "neither"
        raise DataError(
            f"{where}: a pair needs exactly one of 'prompt' or 'messages', it has {state}: {_FORMS}"
        )
    if has == ["prompt"]:
        prompt = record["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(f"{where}: 'prompt' must be a non-empty string: fix the line")
        return [{"role": "user", "content": prompt}]
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        raise DataError(
            f"{where}: 'messages' must be a non-empty list of "
            "{'role': ..., 'content': ...} objects ending with the user turn"
        )
    chat.check_dialogue([*messages, {"role": "assistant", "content": ""}], where)
    if messages[-1]["role"] != "user":
        raise DataError(
            f"{where}: 'messages' ends with a {messages[-1]['role']!r} turn, not the user turn "
            "the answers reply to: put the answers in 'chosen' / 'rejected' only"
        )
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def pair_of(line: str, where: str) -> PreferencePair:
    """One preference jsonl line -> its `PreferencePair` (one-line `DataError` naming `where`)."""
    record = textio.jsonl_record(line, where, "'prompt' (or 'messages'), 'chosen', 'rejected'")
    messages = _prompt_messages(record, where)
    chosen, rejected = (_answer(record, k, where) for k in ("chosen", "rejected"))
    if chosen.strip() == rejected.strip():
        raise DataError(
            f"{where}: 'chosen' and 'rejected' are the same answer, so the pair has no "
            "preference signal: fix or remove the pair"
        )
    return PreferencePair(where, messages, chosen, rejected)


def split_of_pair(pair: PreferencePair) -> str:
    """``"train"`` / ``"eval"`` by a hash of the pair's content (not of its layout)."""
    key = [pair.messages, pair.chosen, pair.rejected]
    return sources.split_of(json.dumps(key, sort_keys=True, ensure_ascii=False))


# --- the synthetic pairs ------------------------------------------------------------------------
def near_miss(answer: str, rng: np.random.Generator) -> str:
    """A plausible wrong answer, never equal to `answer` (up to whitespace): a number gets one
    digit changed; words get two different words swapped, one dropped, or one replaced by another
    of `instructions.WORDS`, the edit drawn from `rng`."""
    words = answer.split()
    if len(words) == 1 and words[0].isdigit():
        digits = list(words[0])
        i = int(rng.integers(len(digits)))
        low = 1 if i == 0 and len(digits) > 1 else 0  # no leading zero
        digits[i] = str(rng.choice([d for d in range(low, 10) if str(d) != digits[i]]))
        return "".join(digits)
    edits = ["replace"] + ["drop"] * (len(words) >= 2) + ["swap"] * (len(set(words)) >= 2)
    edit = edits[int(rng.integers(len(edits)))]
    if edit == "swap":
        i, j = rng.choice(len(words), 2, replace=False)
        while words[i] == words[j]:
            i, j = rng.choice(len(words), 2, replace=False)
        words[i], words[j] = words[j], words[i]
    elif edit == "drop":
        del words[int(rng.integers(len(words)))]
    else:
        i = int(rng.integers(len(words))) if words else 0
        other = [w for w in instructions.WORDS if w != (words[i] if words else None)]
        words[i : i + 1] = [str(rng.choice(other))]
    return " ".join(words)


def _synthetic_pairs(source: str, split: str) -> list[PreferencePair]:
    """The instruction examples of `source` as pairs: chosen the answer, rejected its
    `near_miss` from an rng seeded by the prompt (the same miss whatever the order or count)."""
    tasks = instructions.parse_source(source)
    out = []
    for s in ["train", "eval"] if split == "all" else [split]:
        for i, ex in enumerate(instructions.examples(tasks, s)):
            seed = int(hashlib.sha256(ex.prompt.encode()).hexdigest()[:8], 16)
            miss = near_miss(ex.answer, np.random.default_rng(seed))
            out.append(
                PreferencePair(
                    f"synthetic:{ex.task}#{i}", ex.messages(with_answer=False), ex.answer, miss
                )
            )
    return out


# --- sources ------------------------------------------------------------------------------------
def pair_files(source: str | Path) -> list[Path]:
    """The preference .jsonl files of a file or directory source (raises with the fix)."""
    p = Path(source).expanduser()
    if not p.exists():
        raise DataError(
            f"preference data {p} does not exist: pass a .jsonl file (one {{'prompt', 'chosen', "
            "'rejected'}} per line), a directory of them, or 'synthetic:all'"
        )
    files = sorted(f for f in p.rglob("*.jsonl") if f.is_file()) if p.is_dir() else [p]
    if not files or (not p.is_dir() and p.suffix != ".jsonl"):
        raise DataError(f"preference data {p}: expected a .jsonl file or a directory holding some")
    return files


def load_pairs(source: str | Path, split: str = "train") -> list[PreferencePair]:
    """Every pair of `source` in `split` (train / eval / all), in file and line order."""
    sources.check_split(split)
    if instructions.is_synthetic(source):
        return _synthetic_pairs(str(source), split)
    pairs = [
        pair_of(line, where) for f in pair_files(source) for where, line in textio.jsonl_lines(f)
    ]
    pairs = [pair for pair in pairs if split == "all" or split_of_pair(pair) == split]
    if not pairs:
        raise DataError(
            f"preference data {source} has no pairs in split {split!r} (eval takes ~2% by "
            "hash; a tiny file may have none): add pairs or use split='all'"
        )
    return pairs


def check_preference_source(source: str) -> None:
    """Fast check (`preflight.check_source` with ``fmt="preference"``): the synthetic task
    names, or each file's existence and first record."""
    if instructions.is_synthetic(source):
        instructions.parse_source(source)  # ValueError naming the valid tasks
        return
    for f in pair_files(source):
        first = textio.first_line(f)
        if first is not None:
            pair_of(first[1], first[0])


# --- pairs -> tokens ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PairSamples:
    """Tokenised pairs, flat: pair i is ``[prompt | chosen | rejected]`` at ``chosen.start[i]``;
    `chosen` is a `chat.Samples` of (prompt, chosen) and the rejected ids follow its answer."""

    chosen: Samples
    rejected_len: np.ndarray  # [n] int32

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(prompt [p], chosen [c], rejected [r]) ids of pair i."""
        prompt, chosen = self.chosen.get(i)
        end = int(self.chosen.start[i]) + len(prompt) + len(chosen)
        return prompt, chosen, self.chosen.tokens[end : end + int(self.rejected_len[i])]


def tokenize_pairs(tokenizer: Tokenizer, pairs: Sequence[PreferencePair]) -> PairSamples:
    """Prompt ids (`chat.apply_chat_template`) and each reply's ids (`chat.encode_reply` + EOT),
    as SFT tokenises a dialogue's turn; all texts in one batched encode (`chat.BatchEncoder`)."""
    chat.check_chat_tokenizer(tokenizer)
    encoder = chat.BatchEncoder(tokenizer)

    def ids(tok: Any, pair: PreferencePair) -> list[list[int]]:
        replies = [[*chat.encode_reply(tok, a), tok.eot_id] for a in (pair.chosen, pair.rejected)]
        return [chat.apply_chat_template(tok, pair.messages), *replies]

    for pair in pairs:  # pass 1 records the texts
        ids(encoder, pair)
    encoder.resolve()
    pieces = [ids(encoder, pair) for pair in pairs]
    lens = np.asarray([[len(x) for x in p] for p in pieces], np.int64).reshape(-1, 3)
    start = np.concatenate([[0], np.cumsum(lens.sum(1))[:-1]]).astype(np.int64)
    flat = (t for p in pieces for x in p for t in x)
    tokens = np.fromiter(flat, np.int32, int(lens.sum()))
    samples = Samples(tokens, start, lens[:, 0].astype(np.int32), lens[:, 1].astype(np.int32))
    return PairSamples(samples, lens[:, 2].astype(np.int32))


def fit_pairs(
    pairs: PairSamples, seq_len: int, mask_id: int | None, min_answer_len: int = 0
) -> tuple[PairSamples, dict[str, int], np.ndarray]:
    """(the pairs that fit, `sft.fit_cuts`' counts, each kept pair's prompt + span [n]): the SFT
    rules with the span of the LONGER answer; a mask id anywhere in the pair drops it."""
    s = pairs.chosen
    span = sft.answer_span(np.maximum(s.answer_len, pairs.rejected_len), min_answer_len)
    end = s.start + s.prompt_len + s.answer_len + pairs.rejected_len
    has_mask = sft.holds_token(s.tokens, s.start, end, mask_id)
    keep, cut, stats = sft.fit_cuts(s.prompt_len, span, has_mask, seq_len)
    prompt_len = (s.prompt_len - cut).astype(np.int32)
    fitted = Samples(s.tokens, (s.start + cut)[keep], prompt_len[keep], s.answer_len[keep])
    total = prompt_len[keep].astype(np.int64) + span[keep]
    return PairSamples(fitted, pairs.rejected_len[keep]), stats, total


class _PairPlanner(sft.BatchPlanner):
    """SFT's planner over pairs: the same plans and shards, two collated rows per pair."""

    def __init__(self, pairs: PairSamples, *args: Any) -> None:
        super().__init__(pairs.chosen, *args)
        self.pairs = pairs

    def collate_rows(
        self, rows: np.ndarray, length: int, offsets: np.ndarray | None
    ) -> dict[str, np.ndarray]:
        got = [self.pairs.get(i) for i in rows]
        chosen = sft.collate([(p, c) for p, c, _ in got], length, self.eos_id)
        rejected = sft.collate([(p, r) for p, _, r in got], length, self.eos_id)
        return {
            "chosen": chosen["tokens"],
            "rejected": rejected["tokens"],
            "prompt_lengths": chosen["prompt_lengths"],
        }


def make_preference_batches(
    tokenizer: Tokenizer,
    *,
    source: str,
    seq_len: int,
    batch_size: int,
    seed: int,
    split: str = "train",
    num_buckets: int = 4,
    min_answer_len: int = 0,
    process_index: int = 0,
    process_count: int = 1,
) -> sft.SFTBatches:
    """Endless, shuffled, bucketed pair batches ``{"chosen": int32 [batch_size, L], "rejected":
    int32 [batch_size, L], "prompt_lengths": int32 [batch_size]}`` of `source`.

    L is one of at most `num_buckets` lengths up to `seq_len` (`sft.choose_buckets` over each
    pair's prompt + longer answer span); `min_answer_len` as in `sft.make_sft_batches`. With
    several processes every host takes its own `batch_size` rows of one global batch (all hosts
    agree on L). Deterministic in `seed`; resumable through the grain iterator's state.
    ``.stats["samples"]`` counts the usable pairs.
    """
    sft.check_sizes(batch_size, seq_len, min_answer_len, process_index, process_count)
    pairs = tokenize_pairs(tokenizer, load_pairs(source, split))
    fitted, stats, total = fit_pairs(pairs, seq_len, tokenizer.mask_id, min_answer_len)
    group = batch_size * process_count
    if len(fitted.chosen) < group:
        raise DataError(
            f"preference data {source!r} split {split!r} has {len(fitted.chosen)} usable pairs, "
            f"fewer than one batch of {group}: add pairs or lower train.batch_size"
        )
    buckets = sft.choose_buckets(total, seq_len, num_buckets)
    bucket_of = np.searchsorted(np.asarray(buckets), total)
    planner = _PairPlanner(
        fitted, bucket_of, buckets, batch_size, group, process_index, seed, tokenizer.eos_id
    )
    stats |= {"source": str(source), "split": split}
    return sft.planned_batches(planner, total, stats, seq_len, "preference data", "pairs")


__all__ = [
    "PairSamples",
    "PreferencePair",
    "check_preference_source",
    "fit_pairs",
    "load_pairs",
    "make_preference_batches",
    "near_miss",
    "pair_files",
    "pair_of",
    "tokenize_pairs",
]
