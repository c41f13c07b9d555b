"""One `Tokenizer` interface over sentencepiece models and Hugging Face ``tokenizer.json``.

* `SentencePieceTokenizer(model_path)`: a sentencepiece ``.model``.
* `HFTokenizer(tokenizer_json_path)`: a ``tokenizer.json`` (the `tokenizers` library), e.g.
  LLaDA-8B's. Special ids are found by token content (``<|startoftext|>`` bos,
  ``<|endoftext|>`` eos = pad, ``<|eot_id|>``, ``<|mdm_mask|>``, ``<|start_header_id|>``,
  ``<|end_header_id|>``); a missing one raises `MissingTokenError` only when it is asked for.
* `load_tokenizer(path)`: either of them by what ``path`` is, or ``"embedded"``: the default
  sentencepiece tokenizer, trained at first use and cached (`lladax.data.tokenizer_train`).

The chat template that turns messages into prompt ids lives in `lladax.data.chat`.
"""

from __future__ import annotations

import abc
import hashlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lladax.data.tokenizer_train import EOT_PIECE, MASK_PIECE, default_tokenizer_file

if TYPE_CHECKING:  # importing the config module would import JAX; the CLI loads tokenizers first
    from lladax.config import ModelConfig

SPECIAL_ROLES = ("unk", "bos", "eos", "pad", "eot", "mask", "start_header", "end_header")
# Token contents looked up (first match wins) for each role in a tokenizer.json.
HF_SPECIAL_TOKENS: dict[str, tuple[str, ...]] = {
    "bos": ("<|startoftext|>", "<|begin_of_text|>", "<s>"),
    "eos": ("<|endoftext|>", "<|end_of_text|>", "</s>"),
    "eot": ("<|eot_id|>",),
    "mask": ("<|mdm_mask|>",),
    "start_header": ("<|start_header_id|>",),
    "end_header": ("<|end_header_id|>",),
}
_UNKNOWN_TEXT = " \u2047 "  # what sentencepiece prints for <unk>


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:160]}" if text else type(e).__name__


def _parse_file[T](
    path: Path,
    parse: Callable[[str], T],
    errors: tuple[type[Exception], ...],
    *,
    kind: str,
    existing: str,
    right: str,
) -> T:
    """``parse(str(path))`` of a tokenizer file, else a one-line error: the file is missing
    (pass an ``existing`` one) or ``parse`` raised one of ``errors`` (not a ``kind``: pass
    ``right``)."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{kind} {path} does not exist: pass an existing {existing}, or 'embedded'"
        )
    try:
        return parse(str(path))
    except errors as e:
        raise ValueError(
            f"{path} is not a {kind} ({_first_line(e)}): pass {right}, or 'embedded'"
        ) from None


class MissingTokenError(ValueError):
    """The tokenizer has no token for a special role that the caller needs."""


class Tokenizer(abc.ABC):
    """Text <-> token ids, plus the special ids LLaDA needs.

    Subclasses set ``self._special`` (role -> id or None) and implement the abstract methods.
    The special-id properties raise `MissingTokenError` when the tokenizer lacks that token.
    """

    name: str
    _special: dict[str, int | None]

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of token ids (the model's embedding may be larger)."""

    @property
    @abc.abstractmethod
    def fingerprint(self) -> str:
        """A short hash of the tokenizer's content (for cache keys)."""

    @abc.abstractmethod
    def _encode(self, texts: list[str]) -> list[list[int]]: ...

    @abc.abstractmethod
    def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
        """Token ids (any ints, out-of-range ones included) -> text; never raises on ids."""

    def decode_reply(self, ids: Iterable[int], *, skip_special: bool = True) -> str:
        """Generated ids ``[n]`` -> text, cut before the first EOS or EOT (the end of the reply;
        what follows is LLaDA's EOS padding), special tokens dropped by default, surrounding
        whitespace stripped (`encode_reply` of the plain-text template starts with the space
        that follows ``Assistant:``)."""
        stops = {v for k, v in self._special.items() if k in ("eos", "eot") and v is not None}
        kept = []
        for i in ids:
            if int(i) in stops:
                break
            kept.append(int(i))
        return self.decode(kept, skip_special=skip_special).strip()

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        """Text -> ids ``[n]`` (no specials added unless ``add_bos``)."""
        ids = self._encode([text])[0]
        return [self.bos_id, *ids] if add_bos else ids

    def encode_batch(self, texts: Sequence[str], *, add_bos: bool = False) -> list[list[int]]:
        """Many texts at once (multi-threaded where the backend allows)."""
        out = self._encode(list(texts))
        return [[self.bos_id, *ids] for ids in out] if add_bos else out

    def special_ids(self) -> dict[str, int | None]:
        """All special roles -> id, None where the tokenizer has no such token."""
        return dict(self._special)

    def _get(self, role: str) -> int:
        value = self._special.get(role)
        if value is None:
            hint = HF_SPECIAL_TOKENS.get(role, (role,))
            raise MissingTokenError(
                f"tokenizer {self.name} has no {role} token (looked for {list(hint)}): use a "
                f"tokenizer that defines it, or pass special_tokens={{'{role}': '<token>'}}"
            )
        return value

    unk_id = property(lambda self: self._get("unk"), doc="Unknown-token id.")
    bos_id = property(lambda self: self._get("bos"), doc="Beginning-of-sequence id.")
    eos_id = property(lambda self: self._get("eos"), doc="End-of-sequence (document) id.")
    pad_id = property(lambda self: self._get("pad"), doc="Padding id (= eos for LLaDA).")
    eot_id = property(lambda self: self._get("eot"), doc="End-of-turn id (chat).")
    mask_id = property(lambda self: self._get("mask"), doc="The diffusion [MASK] id.")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, vocab_size={self.vocab_size})"


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece model. eot / mask are the pieces ``<|eot_id|>`` / ``<|mdm_mask|>``;
    pad is the model's pad piece if it has one, else eos."""

    def __init__(self, model_path: str | Path) -> None:
        import sentencepiece as spm

        path = Path(model_path).expanduser()
        self.name = str(path)
        self._sp = sp = _parse_file(
            path,
            lambda file: spm.SentencePieceProcessor(model_file=file),
            (RuntimeError, OSError),  # sentencepiece's multi-line parse errors
            kind="sentencepiece model",
            existing=".model file",
            right="the tokenizer.model it was trained as",
        )

        def valid(i: int) -> int | None:
            return i if i >= 0 else None

        def piece(text: str) -> int | None:
            i = sp.piece_to_id(text)
            return i if sp.id_to_piece(i) == text else None

        eos = valid(sp.eos_id())
        self._special = {
            "unk": valid(sp.unk_id()),
            "bos": valid(sp.bos_id()),
            "eos": eos,
            "pad": valid(sp.pad_id()) if sp.pad_id() >= 0 else eos,
            "eot": piece(EOT_PIECE),
            "mask": piece(MASK_PIECE),
            "start_header": piece("<|start_header_id|>"),
            "end_header": piece("<|end_header_id|>"),
        }
        self._fingerprint = hashlib.sha256(sp.serialized_model_proto()).hexdigest()[:16]

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def _encode(self, texts: list[str]) -> list[list[int]]:
        return self._sp.encode(texts, num_threads=os.cpu_count() or 1)

    def _is_special(self, i: int) -> bool:
        return self._sp.is_control(i) or self._sp.is_unknown(i)

    def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
        """Specials render as their piece (``<s>``, ``</s>``, ``<|mdm_mask|>``...) unless
        ``skip_special``; ids outside ``[0, vocab_size)`` render as ``⁇`` (or are skipped)."""
        out: list[str] = []
        run: list[int] = []
        for i in (int(i) for i in ids):
            if 0 <= i < self.vocab_size and not self._is_special(i):
                run.append(i)
                continue
            if run:
                out.append(self._sp.decode(run))
                run = []
            if not skip_special:
                in_range = 0 <= i < self.vocab_size and not self._sp.is_unknown(i)
                out.append(self._sp.id_to_piece(i) if in_range else _UNKNOWN_TEXT)
        if run:
            out.append(self._sp.decode(run))
        return "".join(out)


class HFTokenizer(Tokenizer):
    """A Hugging Face ``tokenizer.json``. ``special_tokens`` overrides the content looked up for a
    role (e.g. ``{"bos": "<s>"}``); pad is eos unless given."""

    def __init__(
        self, tokenizer_json_path: str | Path, special_tokens: Mapping[str, str] | None = None
    ) -> None:
        from tokenizers import Tokenizer as _HF

        path = Path(tokenizer_json_path).expanduser()
        if path.is_dir():
            path = path / "tokenizer.json"
        self.name = str(path)
        self._tok = _parse_file(
            path,
            _HF.from_file,
            (Exception,),  # tokenizers raises a bare Exception on bad JSON / unknown model
            kind="Hugging Face tokenizer.json",
            existing="tokenizer.json",
            right="the model's own tokenizer.json",
        )
        overrides = dict(special_tokens or {})
        unknown = sorted(set(overrides) - set(SPECIAL_ROLES))
        if unknown:
            raise ValueError(f"unknown special token roles {unknown}; valid: {SPECIAL_ROLES}")

        def lookup(role: str) -> int | None:
            candidates = [overrides[role]] if role in overrides else HF_SPECIAL_TOKENS[role]
            for content in candidates:
                if (i := self._tok.token_to_id(content)) is not None:
                    return i
            return None

        self._special = {role: lookup(role) for role in HF_SPECIAL_TOKENS}
        unk = overrides.get("unk") or getattr(self._tok.model, "unk_token", None)
        self._special["unk"] = self._tok.token_to_id(unk) if unk else None
        pad = overrides.get("pad")
        self._special["pad"] = self._tok.token_to_id(pad) if pad else self._special["eos"]
        self._fingerprint = hashlib.sha256(self._tok.to_str().encode()).hexdigest()[:16]

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def _encode(self, texts: list[str]) -> list[list[int]]:
        """Added special tokens written literally in the text are recognised (as in HF)."""
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
        """Ids outside ``[0, vocab_size)`` are dropped."""
        ids = [int(i) for i in ids if 0 <= int(i) < self.vocab_size]
        return self._tok.decode(ids, skip_special_tokens=skip_special)


def load_tokenizer(
    path: str | Path, *, vocab_size: int | None = None, cache_dir: str | Path | None = None
) -> Tokenizer:
    """Dispatch on what ``path`` is: a ``.model`` file (sentencepiece), a ``.json`` file (HF), a
    directory holding ``tokenizer.json`` or ``tokenizer.model``, or ``"embedded"`` (the default
    sentencepiece tokenizer of ``vocab_size`` trained at first use and cached under ``cache_dir``,
    see `lladax.data.tokenizer_train.default_tokenizer_file`)."""
    file = tokenizer_file(path)
    if file is None:
        if vocab_size is None:
            raise ValueError("load_tokenizer('embedded') needs vocab_size= (e.g. 512 or 2048)")
        return SentencePieceTokenizer(default_tokenizer_file(vocab_size, cache_dir))
    return HFTokenizer(file) if file.suffix == ".json" else SentencePieceTokenizer(file)


def tokenizer_file(path: str | Path) -> Path | None:
    """The file `load_tokenizer` reads for ``path`` (None for ``"embedded"``), found without
    loading anything, so a CLI refuses a bad ``--tokenizer`` before any slow work starts.
    Raises a one-line FileNotFoundError / ValueError naming the fix."""
    if str(path) in ("embedded", "default"):
        return None
    p = Path(path).expanduser()
    if p.is_dir():
        for name in ("tokenizer.json", "tokenizer.model"):
            if (p / name).is_file():
                return p / name
        raise FileNotFoundError(
            f"directory {p} holds neither tokenizer.json nor tokenizer.model: pass the tokenizer "
            "file itself, or 'embedded'"
        )
    if not p.exists():
        raise FileNotFoundError(
            f"tokenizer path {p} does not exist: pass a sentencepiece .model, a tokenizer.json "
            "(or a directory holding one), or 'embedded'"
        )
    if p.suffix not in (".model", ".json"):
        raise ValueError(f"cannot tell the tokenizer type of {p}: expected a .model or .json file")
    return p


__all__ = [
    "HFTokenizer",
    "MissingTokenError",
    "SentencePieceTokenizer",
    "Tokenizer",
    "load_tokenizer",
    "tokenizer_file",
]


def check_compatible(tokenizer: Tokenizer, cfg: ModelConfig) -> None:
    """Raise a one-line ValueError if `tokenizer` cannot feed a model configured by `cfg`."""
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ValueError(
            f"vocab mismatch: the tokenizer ({tokenizer.name}) has {tokenizer.vocab_size} ids but "
            f"the model's vocab_size is {cfg.vocab_size}: use the model's own tokenizer or set "
            "model.vocab_size to at least the tokenizer's size"
        )
    for role, model_id in (("mask", cfg.mask_token_id), ("eos", cfg.eos_token_id)):
        try:
            tok_id = getattr(tokenizer, f"{role}_id")
        except MissingTokenError:
            continue
        if tok_id is not None and tok_id != model_id:
            raise ValueError(
                f"special-token mismatch: the tokenizer's {role} id is {tok_id} but the model's "
                f"{role}_token_id is {model_id}: set model.{role}_token_id={tok_id} or use the "
                "matching tokenizer"
            )
