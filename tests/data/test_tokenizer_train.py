"""The default (embedded) sentencepiece tokenizer: reserved ids, round trips, the on-disk cache
(hit, deterministic retrain, damaged file, unwritable directory), refusals before training."""

from __future__ import annotations

from pathlib import Path

import pytest

from lladax import files
from lladax.data import sources
from lladax.data import tokenizer as T
from lladax.data import tokenizer_train as TT

TEXTS = [
    "Hello, world!",
    "héllo  wörld\n\t日本語テキスト 🎉🦀 naïve café",
    "  leading and trailing spaces  \n\n\n",
    "control \x00\x01\x7f and zero-width \u200b and RTL \u05e9\u05dc\u05d5\u05dd",
    "literal specials: <s></s><unk><|eot_id|><|mdm_mask|><|endoftext|>",
    "def f(x):\n    return x ** 2  # 1234567890\r\n",
    "",
]


@pytest.fixture(scope="session")
def tokenizers(cache_dir) -> dict[int, T.SentencePieceTokenizer]:
    return {v: T.load_tokenizer("embedded", vocab_size=v, cache_dir=cache_dir) for v in (512, 2048)}


@pytest.mark.parametrize("vocab", [512, 2048])
def test_default_special_ids(tokenizers, vocab):
    tok = tokenizers[vocab]
    assert tok.vocab_size == vocab
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id, tok.eot_id, tok.mask_id) == (
        0,
        1,
        2,
        2,
        3,
        4,
    )


@pytest.mark.parametrize("vocab", [512, 2048])
def test_round_trip_and_no_special_ids(tokenizers, vocab):
    tok = tokenizers[vocab]
    for text in TEXTS:
        ids = tok.encode(text)
        assert all(5 <= i < vocab for i in ids), (text, ids)
        assert tok.decode(ids) == text
    sample = sources.load_documents("embedded", "eval")[:20]
    for ids, text in zip(tok.encode_batch(sample), sample, strict=True):
        assert min(ids) >= 5 and max(ids) < vocab
        assert tok.decode(ids) == text
    assert tok.encode("abc", add_bos=True)[0] == tok.bos_id


def test_cache_hit_does_not_retrain(tokenizers, cache_dir, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("retrained although the model is cached")

    monkeypatch.setattr(TT, "_train_sentencepiece", boom)
    again = T.load_tokenizer("embedded", vocab_size=512, cache_dir=cache_dir)
    assert again.fingerprint == tokenizers[512].fingerprint


def test_training_is_deterministic_and_uses_env_cache(tokenizers, tmp_path, monkeypatch):
    calls = []
    real = TT._train_sentencepiece

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(TT, "_train_sentencepiece", counting)
    monkeypatch.setenv("LLADAX_CACHE", str(tmp_path))
    fresh = T.load_tokenizer("embedded", vocab_size=512)
    assert calls == [1]
    assert Path(fresh.name).parent == tmp_path / "tokenizers"
    assert fresh.fingerprint == tokenizers[512].fingerprint  # same bytes on a fresh train
    assert not [p for p in (tmp_path / "tokenizers").iterdir() if p.suffix == ".tmp"]


def test_default_tokenizer_refuses_before_reading_the_corpus(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("read the embedded corpus before checking vocab_size")

    monkeypatch.setattr(sources, "load_documents", boom)
    with pytest.raises(ValueError, match="vocab_size=100 is too small"):
        T.load_tokenizer("embedded", vocab_size=100)


def test_damaged_cached_tokenizer_is_rebuilt(tokenizers, tmp_path, monkeypatch):
    good = tokenizers[512]
    key_path = Path(good.name)
    damaged = tmp_path / "tokenizers" / key_path.name
    damaged.parent.mkdir()
    damaged.write_bytes(b"half a model")  # e.g. a full disk under an older, non-atomic writer

    def train(documents, vocab_size, path):  # the real trainer, minus the seconds it takes
        return files.atomic_write(Path(path), key_path.read_bytes())

    monkeypatch.setattr(TT, "train_sentencepiece", train)
    monkeypatch.setattr(sources, "load_documents", lambda *a, **k: [])
    assert (
        T.load_tokenizer("embedded", vocab_size=512, cache_dir=tmp_path).fingerprint
        == good.fingerprint
    )
    (tmp_path / "blocker").write_text("a file where the cache directory should be")
    with pytest.raises(sources.DataError, match="set LLADAX_CACHE to a writable directory"):
        T.load_tokenizer("embedded", vocab_size=512, cache_dir=tmp_path / "blocker")
