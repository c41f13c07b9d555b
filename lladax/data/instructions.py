"""A built-in synthetic instruction set: no download, generated from a seed, exact-match scored.

Tasks (prompt -> answer), over a fixed list of common words and small numbers:

  copy     "Copy: file list value"              -> "file list value"
  reverse  "Reverse: file list value"           -> "value list file"
  sort     "Sort: value file list"              -> "file list value"      (alphabetical)
  add      "Add: 23 + 58"                       -> "81"
  lookup   "Find B: A = file B = list C = value" -> "list"

Short answers from a small vocabulary, so a few-million-parameter model learns them in minutes on
a CPU (the SFT demo, `benchmarks/sft_demo.py`) and tests can train on them in seconds.
``"synthetic:all"`` means these five (`TASKS`).

Long-answer tasks (`LONG_TASKS`, ``"synthetic:long"``), `LONG_WORDS` words drawn with
replacement, so an answer is `LONG_WORDS` tokens of the embedded 2048-piece tokenizer (one per
word): long enough for accuracy at generation length 512 to mean something
(`benchmarks/block_decoding.py`). Scored by exact match and `token_accuracy`:

  long_copy     "Copy: w1 w2 ... w200"     -> "w1 w2 ... w200"
  long_reverse  "Reverse: w1 w2 ... w200"  -> "w200 ... w2 w1"
  long_sort     "Sort: w1 w2 ... w200"     -> the 200 words in alphabetical order

Splits are by a hash of the prompt text (`HELDOUT_FRACTION` goes to ``"eval"``), so a held-out
prompt never occurs in ``"train"`` whatever the seed or count; within a split, examples are
drawn with ``numpy.random.default_rng([seed, task index, split])`` and deduplicated, so the same
(seed, count) always gives the same list.

``source`` strings (`parse_source`): ``"synthetic:all"``, ``"synthetic:long"`` or a list of task
names, ``"synthetic:copy,reverse"``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

PREFIX = "synthetic:"
HELDOUT_FRACTION = 0.1
TRAIN_PER_TASK = 2500  # examples per task in the "train" split (copy has ~3,020 in all)
EVAL_PER_TASK = 200  # examples per task in the "eval" split
# 16 common words of the Python documentation: each is ONE token (" file") in the embedded
# 2048-piece tokenizer. Every prompt word follows a space, and so does every answer word (the
# reply's first piece carries the space after "Assistant:", `chat.encode_reply`), so an
# answer word has the same id as the prompt word it comes from: a few tokens from a small
# vocabulary, learnable by a 4.5M-parameter model in minutes.
WORDS = (
    "file",
    "list",
    "value",
    "type",
    "object",
    "string",
    "data",
    "class",
    "error",
    "line",
    "time",
    "path",
    "key",
    "code",
    "text",
    "name",
)
KEYS = tuple("ABCDEFGH")
LONG_WORDS = 200  # words (= answer tokens) of every long-task answer


@dataclasses.dataclass(frozen=True)
class Example:
    """One instruction: `prompt` is the user message, `answer` the exact expected reply."""

    task: str
    prompt: str
    answer: str

    def messages(self, *, with_answer: bool = True) -> list[dict[str, str]]:
        """Chat messages: user prompt (+ assistant answer)."""
        user = [{"role": "user", "content": self.prompt}]
        return [*user, {"role": "assistant", "content": self.answer}] if with_answer else user


def _words(rng: np.random.Generator, n: int = 3) -> list[str]:
    """n distinct words (distinct so that sort / reverse answers are unambiguous). A fixed
    length puts answer word j at a fixed distance from its prompt word: the copy pattern a
    small model picks up quickly."""
    return [WORDS[i] for i in rng.choice(len(WORDS), n, replace=False)]


def _copy(rng: np.random.Generator) -> tuple[str, str]:
    w = _words(rng)
    return "Copy: " + " ".join(w), " ".join(w)


def _reverse(rng: np.random.Generator) -> tuple[str, str]:
    w = _words(rng)
    return "Reverse: " + " ".join(w), " ".join(reversed(w))


def _sort(rng: np.random.Generator) -> tuple[str, str]:
    w = _words(rng)
    return "Sort: " + " ".join(w), " ".join(sorted(w))


def _add(rng: np.random.Generator) -> tuple[str, str]:
    a, b = (int(x) for x in rng.integers(0, 100, 2))
    return f"Add: {a} + {b}", str(a + b)


def _lookup(rng: np.random.Generator) -> tuple[str, str]:
    n = 3
    keys = [KEYS[i] for i in rng.choice(len(KEYS), n, replace=False)]
    values = _words(rng, n)
    asked = int(rng.integers(n))
    # "A = file", not "A=file": "=file" would tokenise the value without its leading space,
    # a different id from the same word in the answer.
    pairs = " ".join(f"{k} = {v}" for k, v in zip(keys, values, strict=True))
    return f"Find {keys[asked]}: {pairs}", values[asked]


def _long_words(rng: np.random.Generator) -> list[str]:
    """`LONG_WORDS` words drawn with replacement: a fixed length, so answer word j sits at the
    same distance from prompt word j in every long_copy example."""
    return [WORDS[i] for i in rng.integers(len(WORDS), size=LONG_WORDS)]


def _long_copy(rng: np.random.Generator) -> tuple[str, str]:
    w = _long_words(rng)
    return "Copy: " + " ".join(w), " ".join(w)


def _long_reverse(rng: np.random.Generator) -> tuple[str, str]:
    w = _long_words(rng)
    return "Reverse: " + " ".join(w), " ".join(reversed(w))


def _long_sort(rng: np.random.Generator) -> tuple[str, str]:
    w = _long_words(rng)
    return "Sort: " + " ".join(w), " ".join(sorted(w))


Task = Callable[[np.random.Generator], tuple[str, str]]
TASKS: dict[str, Task] = {  # the short tasks: what "synthetic:all" means
    "copy": _copy,
    "reverse": _reverse,
    "sort": _sort,
    "add": _add,
    "lookup": _lookup,
}
LONG_TASKS: dict[str, Task] = {  # "synthetic:long"
    "long_copy": _long_copy,
    "long_reverse": _long_reverse,
    "long_sort": _long_sort,
}
# Every task by name, in the order that numbers their random streams (a short task keeps the
# index it had before the long ones were added, so its data is unchanged).
ALL_TASKS: dict[str, Task] = {**TASKS, **LONG_TASKS}
GROUPS = {"all": list(TASKS), "long": list(LONG_TASKS)}


def split_of(prompt: str) -> str:
    """``"eval"`` for about `HELDOUT_FRACTION` of prompts (by content hash), else ``"train"``."""
    bucket = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16) % 10_000
    return "eval" if bucket < HELDOUT_FRACTION * 10_000 else "train"


def is_synthetic(source: Any) -> bool:
    return isinstance(source, str) and source.startswith(PREFIX)


def parse_source(source: str) -> list[str]:
    """``"synthetic:all"`` (the short `TASKS`) / ``"synthetic:long"`` (`LONG_TASKS`) /
    ``"synthetic:copy,long_copy"`` -> task names (in `ALL_TASKS` order)."""
    if not is_synthetic(source):
        raise ValueError(
            f"{source!r} is not a synthetic source: write 'synthetic:all' or "
            f"'synthetic:<tasks>' with tasks from {sorted(ALL_TASKS)}"
        )
    names = [n.strip() for n in source[len(PREFIX) :].split(",") if n.strip()]
    if len(names) == 1 and names[0] in GROUPS:
        return list(GROUPS[names[0]])
    unknown = sorted(set(names) - set(ALL_TASKS))
    if unknown or not names:
        raise ValueError(
            f"unknown synthetic task(s) {unknown or names} in {source!r}: choose "
            f"from {sorted(ALL_TASKS)} or {' / '.join(map(repr, GROUPS))}, comma-separated"
        )
    return [t for t in ALL_TASKS if t in names]


def examples(
    tasks: Sequence[str], split: str = "train", *, seed: int = 0, per_task: int | None = None
) -> list[Example]:
    """`per_task` distinct examples of each task in `split` ("train" / "eval"), task by task.

    Defaults: `TRAIN_PER_TASK` / `EVAL_PER_TASK`. Deterministic in (tasks, split, seed, per_task).
    """
    if split not in ("train", "eval"):
        raise ValueError(f"synthetic split {split!r} is unknown: use 'train' or 'eval'")
    n = (
        per_task
        if per_task is not None
        else (TRAIN_PER_TASK if split == "train" else EVAL_PER_TASK)
    )
    out: list[Example] = []
    for name in tasks:
        if name not in ALL_TASKS:
            raise ValueError(f"unknown synthetic task {name!r}: choose from {sorted(ALL_TASKS)}")
        rng = np.random.default_rng([seed, list(ALL_TASKS).index(name), split == "eval"])
        seen: set[str] = set()
        attempts = 0
        while len(seen) < n:
            attempts += 1
            if attempts > 50 * n + 1000:
                raise ValueError(
                    f"task {name!r} has too few distinct {split} prompts for "
                    f"per_task={n}: ask for fewer"
                )
            prompt, answer = ALL_TASKS[name](rng)
            if prompt in seen or split_of(prompt) != split:
                continue
            seen.add(prompt)
            out.append(Example(name, prompt, answer))
    return out


# --- scoring ------------------------------------------------------------------------------------
def normalize(text: str) -> str:
    """Whitespace-insensitive form: runs of whitespace -> one space, ends stripped."""
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> bool:
    """True iff the texts are equal up to whitespace (`normalize`)."""
    return normalize(prediction) == normalize(reference)


def token_accuracy(prediction: str, reference: str) -> float:
    """The fraction of the reference's words that the prediction has at the same index (words:
    whitespace-separated, `normalize`); a missing or extra word is a miss, so only an exact
    match scores 1."""
    pred, ref = prediction.split(), reference.split()
    if not ref:
        return float(not pred)
    hits = sum(p == r for p, r in zip(pred, ref, strict=False))
    return hits / max(len(ref), len(pred))


def accuracy_by_task(items: Sequence[Example], predictions: Sequence[str]) -> dict[str, float]:
    """Exact-match accuracy per task (first-seen order) over aligned examples and predictions."""
    if len(items) != len(predictions):
        raise ValueError(f"{len(items)} examples but {len(predictions)} predictions")
    hits: dict[str, list[bool]] = {}
    for ex, pred in zip(items, predictions, strict=True):
        hits.setdefault(ex.task, []).append(exact_match(pred, ex.answer))
    return {task: float(np.mean(h)) for task, h in hits.items()}
