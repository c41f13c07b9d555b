"""Chat: the prompt template, and chat dialogues -> tokenised (prompt, answer) samples for SFT.

Template (`apply_chat_template`): LLaDA / LLaMA-3's header format when the tokenizer has header
tokens, a plain-text fallback otherwise; `encode_reply` gives an assistant reply's ids as they
follow that prompt (what SFT trains on and `Tokenizer.decode_reply` reads back).

Sources (`load_dialogues`): a chat-format ``.jsonl`` file (or a directory of them), one dialogue
per line ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``, split into
train / eval by a hash of the dialogue (`sources.split_of`); or ``"synthetic:<tasks>"``, the
built-in
instruction set of `lladax.data.instructions` (its own hashed train / eval split).

Samples (`dialogue_samples`), as in the paper: a dialogue gives one sample per assistant turn; the
prompt is everything before that turn rendered with the chat template plus the assistant header
(exactly what a user's prompt looks like at inference), the answer is the reply's tokens as they
follow that header (`encode_reply`: with the plain-text template the reply's first piece carries
the space after ``Assistant:``, as in the encoded text of a whole turn) followed by EOT.
`load_samples` tokenises a whole source into one flat `Samples` (cached for jsonl files);
`lladax.data.sft` fits, pads and batches them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lladax.data import instructions, sources, textio
from lladax.data.sources import DataError

if TYPE_CHECKING:  # the backends load only with a tokenizer, so `check_chat_source` stays fast
    from lladax.data.tokenizer import Tokenizer


# --- chat template ------------------------------------------------------------------------------
def _has_headers(tokenizer: Tokenizer) -> bool:
    special = tokenizer.special_ids()
    return special.get("start_header") is not None and special.get("end_header") is not None


def apply_chat_template(
    tokenizer: Tokenizer, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True
) -> list[int]:
    """Chat messages ``[{"role", "content"}, ...]`` -> prompt ids ``[n]``.

    With header tokens (LLaDA / LLaMA-3), exactly LLaDA's template (contents stripped)::

        <BOS><|start_header_id|>user<|end_header_id|>\\n\\n{content}<|eot_id|>...
        <|start_header_id|>assistant<|end_header_id|>\\n\\n      (if add_generation_prompt)

    Texts are encoded piecewise between the special ids, which equals HF's encoding of the rendered
    string and keeps special-token text inside a message from becoming control ids. Without header
    tokens (the default sentencepiece tokenizer) a plain-text fallback::

        <BOS>User: {content}<EOT>Assistant: {content}<EOT>...Assistant:

    The generation prompt ends at ``Assistant:`` with NO trailing space: BPE pieces carry their
    leading space (``" file"``), so the space belongs to the reply's first piece
    (`encode_reply`). A prompt ending in a lone ``" "`` piece would be a tokenisation that the
    encoded text of a whole turn never contains, and would give the reply's first word a
    different id (``"file"``) from the same word anywhere else.
    """
    if not messages:
        raise ValueError("apply_chat_template needs at least one message")
    for m in messages:
        if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"each message needs str 'role' and 'content', got {m!r}")
    special = tokenizer.special_ids()
    ids = [tokenizer.bos_id]
    if _has_headers(tokenizer):
        start, end = special["start_header"], special["end_header"]

        def turn(role: str) -> list[int]:
            return [start, *tokenizer.encode(role), end]

        for m in messages:
            ids += [
                *turn(m["role"]),
                *tokenizer.encode("\n\n" + m["content"].strip()),
                tokenizer.eot_id,
            ]
        if add_generation_prompt:
            ids += [*turn("assistant"), *tokenizer.encode("\n\n")]
    else:
        for m in messages:
            text = f"{m['role'].capitalize()}: {m['content'].strip()}"
            ids += [*tokenizer.encode(text), tokenizer.eot_id]
        if add_generation_prompt:
            ids += tokenizer.encode("Assistant:")
    return ids


def encode_reply(tokenizer: Tokenizer, content: str) -> list[int]:
    """The ids ``[n]`` of an assistant reply (stripped; no EOT) as they follow
    `apply_chat_template`'s generation prompt: ``content`` after the header template's
    ``\\n\\n``, ``" " + content`` after the plain-text ``Assistant:``. So a prompt's ids plus
    its reply's ids tokenise the rendered turn as the template renders earlier turns."""
    text = content.strip()
    return tokenizer.encode(text if _has_headers(tokenizer) else " " + text)


# --- dialogues -> samples -------------------------------------------------------------------------
ROLES = ("system", "user", "assistant")
CHAT_SPECIALS = ("bos", "eos", "eot", "mask")
_CACHE_VERSION = 2  # 2: replies tokenised by `encode_reply`


def check_chat_tokenizer(tokenizer: Tokenizer) -> None:
    """One-line ValueError unless the tokenizer has the ids SFT needs (bos, eos, eot, mask)."""
    special = tokenizer.special_ids()
    missing = [r for r in CHAT_SPECIALS if special.get(r) is None]
    if missing:
        raise ValueError(
            f"tokenizer {tokenizer.name} lacks the chat special token(s) {missing} that SFT needs "
            "(bos/eot frame the chat template, eos pads answers, mask is the diffusion mask): use "
            "the model's own tokenizer (LLaDA's tokenizer.json or 'embedded'), or load it with "
            "HFTokenizer(path, special_tokens={role: '<token>'})"
        )


def dialogue_samples(
    tokenizer: Tokenizer, messages: Any, where: str = "dialogue"
) -> list[tuple[list[int], list[int]]]:
    """One (prompt ids, answer ids) pair per assistant turn of `messages`.

    prompt = chat template of all earlier turns + the assistant header; answer = the reply's
    tokens as they follow that header (`tokenizer.encode_reply`) + EOT. Raises a one-line
    `sources.DataError` (naming `where`) for a malformed dialogue.
    """
    check_dialogue(messages, where)
    turns = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
    eot = tokenizer.eot_id
    return [
        (
            apply_chat_template(tokenizer, messages[:k]),
            [*encode_reply(tokenizer, messages[k]["content"]), eot],
        )
        for k in turns
    ]


# --- sources ------------------------------------------------------------------------------------
ROLES = ("system", "user", "assistant")


def chat_files(source: str | Path) -> list[Path]:
    """The chat .jsonl files of a file or directory source (raises with the fix)."""
    p = Path(source).expanduser()
    if not p.exists():
        raise FileNotFoundError(
            f"SFT data {p} does not exist: pass a chat .jsonl file (one "
            "{'messages': [...]} per line), a directory of them, or "
            "'synthetic:all'"
        )
    files = sorted(f for f in p.rglob("*.jsonl") if f.is_file()) if p.is_dir() else [p]
    if not files or (not p.is_dir() and p.suffix != ".jsonl"):
        raise DataError(f"SFT data {p}: expected a chat .jsonl file or a directory holding some")
    return files


def dialogue_of(line: str, where: str) -> Any:
    """The ``messages`` of one chat jsonl line (not yet checked: see `check_dialogue`)."""
    record = textio.jsonl_record(line, where, "a 'messages' list")
    if "messages" not in record:
        raise DataError(
            f"{where}: expected a JSON object with a 'messages' list (it has "
            f"{sorted(record)[:8]}): write {{'messages': [{{'role': 'user', "
            "'content': ...}, ...]} per line"
        )
    return record["messages"]


def check_dialogue(messages: Any, where: str) -> None:
    """One-line `DataError` (naming ``where``) unless ``messages`` is a dialogue SFT can learn
    from: a non-empty list of {role, content} strings, roles from `ROLES`, at least one
    assistant turn and none first."""
    if not isinstance(messages, list) or not messages:
        raise DataError(
            f"{where}: 'messages' must be a non-empty list of "
            "{'role': ..., 'content': ...} objects"
        )
    for m in messages:
        if (
            not isinstance(m, Mapping)
            or not isinstance(m.get("content"), str)
            or not isinstance(m.get("role"), str)
        ):
            raise DataError(
                f"{where}: each message needs a string 'role' and 'content', got {str(m)[:80]}"
            )
        if m["role"] not in ROLES:
            raise DataError(f"{where}: unknown role {m['role']!r}: use one of {ROLES}")
    turns = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
    if not turns:
        raise DataError(
            f"{where}: no assistant turn, so nothing to learn: add the "
            "assistant's reply or remove the dialogue"
        )
    if turns[0] == 0:
        raise DataError(
            f"{where}: the dialogue starts with an assistant turn: put the "
            "user (or system) message it answers before it"
        )


def _read_chat_file(path: Path, split: str) -> list[tuple[str, list]]:
    out = []
    for where, line in textio.jsonl_lines(path):
        messages = dialogue_of(line, where)
        key = json.dumps(messages, sort_keys=True, ensure_ascii=False)
        if split == "all" or sources.split_of(key) == split:
            out.append((where, messages))
    return out


def load_dialogues(source: str | Path, split: str = "train") -> list[tuple[str, list]]:
    """(where, messages) per dialogue of `source` in `split` (train / eval / all).

    `where` is ``file:line`` for jsonl and ``synthetic:<task>#<i>`` for the built-in set.
    """
    if split not in sources.SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {sources.SPLITS}")
    if instructions.is_synthetic(source):
        tasks = instructions.parse_source(str(source))
        splits = ["train", "eval"] if split == "all" else [split]
        return [
            (f"synthetic:{ex.task}#{i}", ex.messages())
            for s in splits
            for i, ex in enumerate(instructions.examples(tasks, s))
        ]
    p = Path(source).expanduser()
    dialogues = [d for f in chat_files(p) for d in _read_chat_file(f, split)]
    if not dialogues:
        raise sources.DataError(
            f"SFT data {p} has no dialogues in split {split!r} (eval takes ~2% "
            "by hash; a tiny file may have none): add data or use split='all'"
        )
    return dialogues


def check_chat_source(source: str) -> None:
    """Fast check of a chat source (`preflight.check_source` with ``fmt="chat"``): the synthetic
    task names, or that each chat file exists and its first record is a valid dialogue."""
    if instructions.is_synthetic(source):
        instructions.parse_source(source)  # ValueError naming the valid tasks
        return
    for f in chat_files(source):
        first = textio.first_line(f)
        if first is not None:
            check_dialogue(dialogue_of(first[1], first[0]), first[0])


@dataclasses.dataclass(frozen=True)
class Samples:
    """Tokenised samples, flat: sample i is ``tokens[start[i] : start[i] + prompt_len[i] +
    answer_len[i]]`` (prompt then answer)."""

    tokens: np.ndarray  # [n_tokens] int32
    start: np.ndarray  # [n] int64
    prompt_len: np.ndarray  # [n] int32
    answer_len: np.ndarray  # [n] int32

    def __len__(self) -> int:
        return len(self.start)

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(prompt [p], answer [a]) of sample i."""
        s, p, a = int(self.start[i]), int(self.prompt_len[i]), int(self.answer_len[i])
        return self.tokens[s : s + p], self.tokens[s + p : s + p + a]


class BatchEncoder:
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


def tokenize_dialogues(
    tokenizer: Tokenizer, dialogues: Sequence[tuple[str, list]], *, chunk: int = 8192
) -> Samples:
    """All samples of `dialogues` (see `dialogue_samples`) as one flat `Samples`."""
    check_chat_tokenizer(tokenizer)
    pieces, prompt_len, answer_len = [], [], []
    for begin in range(0, len(dialogues), chunk):
        part = dialogues[begin : begin + chunk]
        encoder = BatchEncoder(tokenizer)
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
    return Samples(
        tokens, start, np.asarray(prompt_len, np.int32), np.asarray(answer_len, np.int32)
    )


def load_samples(
    tokenizer: Tokenizer,
    source: str | Path,
    split: str = "train",
    *,
    cache_dir: str | Path | None = None,
) -> Samples:
    """`tokenize_dialogues(load_dialogues(source, split))`; jsonl results are cached as ``.npz``
    under ``<cache>/sft`` keyed by tokenizer, source fingerprint and split."""
    if instructions.is_synthetic(source):  # generated in seconds: no cache
        return tokenize_dialogues(tokenizer, load_dialogues(source, split))
    if not Path(source).expanduser().exists():
        load_dialogues(source, split)  # raises the FileNotFoundError with the fix
    key = hashlib.sha256(
        json.dumps(
            [tokenizer.fingerprint, sources.source_fingerprint(source), split, _CACHE_VERSION]
        ).encode()
    ).hexdigest()[:16]
    path = sources.cache_root(cache_dir) / "sft" / f"{key}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                return Samples(**{f.name: z[f.name] for f in dataclasses.fields(Samples)})
        except (OSError, ValueError, KeyError):
            pass  # a corrupt cache file: rebuild it
    samples = tokenize_dialogues(tokenizer, load_dialogues(source, split))
    buf = io.BytesIO()
    np.savez(buf, **dataclasses.asdict(samples))
    sources.write_cache(path, buf.getvalue())
    return samples


__all__ = [
    "CHAT_SPECIALS",
    "ROLES",
    "Samples",
    "apply_chat_template",
    "check_chat_source",
    "check_chat_tokenizer",
    "dialogue_samples",
    "encode_reply",
    "load_dialogues",
    "load_samples",
    "tokenize_dialogues",
]
