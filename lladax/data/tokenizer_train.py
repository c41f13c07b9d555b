"""Training sentencepiece tokenizers, and the default (embedded) one trained at first use.

`default_tokenizer_file(vocab_size)` is a sentencepiece BPE model trained (well under a second) on
the embedded train documents (`lladax.data.corpus`, via `lladax.data.sources`) and cached on disk;
``load_tokenizer("embedded", vocab_size=...)`` loads it. This module knows nothing of the
Tokenizer interface (`lladax.data.tokenizer` imports it, not the other way round). Its reserved
ids match the `tiny` /
`small` presets: unk=0, bos=1, eos=2 (= pad), eot=3 (``<|eot_id|>``), mask=4 (``<|mdm_mask|>``).
eot and mask are sentencepiece *control* symbols, so no input text (not even the literal string
``"<|mdm_mask|>"``) ever encodes to them; byte fallback makes every string round-trip.
`train_sentencepiece` trains the same kind of model on any documents.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Sequence
from pathlib import Path

from lladax import files
from lladax.data import sources
from lladax.data.corpus import embedded_fingerprint

# The pieces the default tokenizer reserves (control symbols); `lladax.data.tokenizer` looks them
# up by these names in any sentencepiece model.
EOT_PIECE, MASK_PIECE = "<|eot_id|>", "<|mdm_mask|>"


def _spm_settings(vocab_size: int) -> dict[str, object]:
    return dict(
        model_type="bpe",
        vocab_size=vocab_size,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        control_symbols=[EOT_PIECE, MASK_PIECE],
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        character_coverage=0.9995,
        input_sentence_size=200_000,
        shuffle_input_sentence=True,
        max_sentence_length=16384,
        minloglevel=2,
        # Fixed: the thread count is recorded in the model file (pieces do not depend on it).
        num_threads=2,
    )


def _train_sentencepiece(sentences: list[str], settings: dict[str, object]) -> bytes:
    """Train a sentencepiece model in memory; returns the serialized model proto."""
    import sentencepiece as spm

    spm.set_random_generator_seed(0)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=buf, **settings)
    return buf.getvalue()


def train_sentencepiece(documents: Sequence[str], vocab_size: int, path: str | Path) -> Path:
    """Train the default-style BPE model (reserved ids as in `default_tokenizer`) on
    ``documents`` (one training sentence per paragraph) and write it atomically to ``path``."""
    check_vocab_size(vocab_size)
    sentences = [p for doc in documents for p in re.split(r"\n\s*\n", doc) if p.strip()]
    if not sentences:
        raise sources.DataError("no text to train a tokenizer on")
    try:
        proto = _train_sentencepiece(sentences, _spm_settings(vocab_size))
    except RuntimeError as e:  # "Vocabulary size too high (N). Please set it to a value <= M."
        most = re.search(r"<= *(\d+)", str(e))
        if most is None:
            raise
        raise ValueError(
            f"vocab_size={vocab_size} is too large for this corpus: sentencepiece "
            f"can make at most {most[1]} tokens from it; use a smaller vocab size "
            "(--vocab-size / model.vocab_size) or more text"
        ) from None
    return files.atomic_write(Path(path), proto)


def check_vocab_size(vocab_size: int) -> None:
    """The lower bound of a trained default-style tokenizer (the upper one depends on the corpus:
    `train_sentencepiece` reports it in about two seconds)."""
    if vocab_size < 300:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: byte fallback alone needs 261 "
            "ids; use 512 or more"
        )


def default_tokenizer_file(vocab_size: int, cache_dir: str | Path | None = None) -> Path:
    """The sentencepiece BPE model file for the embedded corpus, trained at first use and cached.

    Cached at ``<cache>/tokenizers/spm_bpe_<vocab>_<key>.model``, ``<cache>`` = ``cache_dir`` or
    ``$LLADAX_CACHE`` or ``~/.cache/lladax``; ``key`` hashes the embedded corpus fingerprint
    (Python build, module list, extraction version), the trainer settings and the sentencepiece
    version. Written atomically, so concurrent processes are safe. Training is deterministic.
    Ids: unk=0, bos=1, eos=pad=2, eot=3, mask=4.
    """
    import sentencepiece as spm

    check_vocab_size(vocab_size)  # before the embedded corpus is read
    key = hashlib.sha256(
        json.dumps(
            [embedded_fingerprint(), _spm_settings(vocab_size), spm.__version__], sort_keys=True
        ).encode()
    ).hexdigest()[:16]
    path = sources.cache_root(cache_dir) / "tokenizers" / f"spm_bpe_{vocab_size}_{key}.model"
    if path.is_file():
        try:
            spm.SentencePieceProcessor(model_file=str(path))
            return path
        except (RuntimeError, OSError):
            pass  # a damaged cache file (a disk filled up, a hand edit): train it again
    try:
        train_sentencepiece(
            sources.load_documents(sources.EMBEDDED, split="train"), vocab_size, path
        )
    except OSError as e:
        raise sources.DataError(
            f"cannot write the cache file {path} ({e.strerror}): set "
            "LLADAX_CACHE to a writable directory"
        ) from None
    return path
