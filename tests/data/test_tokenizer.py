"""Tokenizers: sentencepiece decoding, HF tokenizer.json, dispatch, chat template, bad paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lladax.data import chat
from lladax.data import tokenizer as T


def test_decode_specials_and_out_of_range(tok):
    body = tok.encode("ab")
    ids = [tok.bos_id, *body, tok.eot_id, tok.mask_id, tok.eos_id, 10_000, -3]
    assert tok.decode(ids, skip_special=True) == "ab"
    rendered = tok.decode(ids)
    assert rendered.startswith("<s>ab<|eot_id|><|mdm_mask|></s>")
    assert tok.decode([]) == ""


def test_load_tokenizer_dispatch(tok, tmp_path, cache_dir, monkeypatch):
    model = Path(tok.name)
    assert T.load_tokenizer(model).fingerprint == tok.fingerprint
    (tmp_path / "tokenizer.model").write_bytes(model.read_bytes())
    assert isinstance(T.load_tokenizer(tmp_path), T.SentencePieceTokenizer)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        T.load_tokenizer(tmp_path / "nope.model")
    with pytest.raises(ValueError, match="vocab_size"):
        T.load_tokenizer("embedded")
    monkeypatch.setenv("LLADAX_CACHE", str(cache_dir))
    assert T.load_tokenizer("embedded", vocab_size=512).fingerprint == tok.fingerprint


# --- Hugging Face tokenizer.json ------------------------------------------------------------------
LLADA_SPECIALS = [
    "<|startoftext|>",
    "<|endoftext|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|mdm_mask|>",
]


def _build_hf(path: Path, specials: list[str]) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = ["user assistant hello world", "what is the capital of France?", "Paris.\n\n"] * 5
    tok.train_from_iterator(corpus, trainer)
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    return path / "tokenizer.json"


def test_hf_tokenizer_specials_and_chat_template(tmp_path):
    json_path = _build_hf(tmp_path / "llada", LLADA_SPECIALS)
    tok = T.load_tokenizer(tmp_path / "llada")
    assert isinstance(tok, T.HFTokenizer)
    ids = {t: i for i, t in enumerate(LLADA_SPECIALS)}  # trainer puts specials first, in order
    assert tok.bos_id == ids["<|startoftext|>"]
    assert tok.eos_id == tok.pad_id == ids["<|endoftext|>"]
    assert tok.eot_id == ids["<|eot_id|>"] and tok.mask_id == ids["<|mdm_mask|>"]
    assert tok.special_ids()["start_header"] == ids["<|start_header_id|>"]

    text = "what is the capital of France? ünïcode"
    assert tok.decode(tok.encode(text)) == text
    messages = [{"role": "user", "content": "what is the capital of France?"}]
    prompt = chat.apply_chat_template(tok, messages)
    # LLaDA's jinja template rendered by hand, encoded by HF in one go:
    rendered = (
        "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\n"
        "what is the capital of France?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert prompt == tok.encode(rendered)
    assert tok.decode(prompt) == rendered
    assert tok.decode(prompt, skip_special=True) == (
        "user\n\nwhat is the capital of France?assistant\n\n"
    )
    assert tok.decode([*prompt, 10**6, -1]) == rendered  # out-of-range ids do not crash
    assert T.load_tokenizer(json_path).fingerprint == tok.fingerprint


def test_hf_missing_special_is_lazy_error(tmp_path):
    _build_hf(tmp_path / "plain", ["<|endoftext|>", "<|startoftext|>", "<|eot_id|>"])
    tok = T.HFTokenizer(tmp_path / "plain")
    assert tok.special_ids()["mask"] is None
    with pytest.raises(T.MissingTokenError, match="mask"):
        _ = tok.mask_id
    # no header tokens -> plain-text fallback template
    ids = chat.apply_chat_template(tok, [{"role": "user", "content": "hello"}])
    assert tok.decode(ids) == "<|startoftext|>User: hello<|eot_id|>Assistant:"
    custom = T.HFTokenizer(tmp_path / "plain", special_tokens={"mask": "<|eot_id|>"})
    assert custom.mask_id == custom.eot_id
    with pytest.raises(ValueError, match="unknown special"):
        T.HFTokenizer(tmp_path / "plain", special_tokens={"nope": "x"})


def test_hf_tokenizer_json_is_valid_json(tmp_path):
    path = _build_hf(tmp_path / "x", LLADA_SPECIALS)
    assert "added_tokens" in json.loads(path.read_text())


def test_hf_multi_turn_template_and_decode_reply(tmp_path):
    tok = T.load_tokenizer(_build_hf(tmp_path / "llada", LLADA_SPECIALS).parent)
    messages = [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "what is the capital of France?"},
    ]
    rendered = (
        "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nhello<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nParis.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nwhat is the capital of France?"
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert chat.apply_chat_template(tok, messages) == tok.encode(rendered)
    reply = tok.encode("Paris.")
    assert chat.encode_reply(tok, " Paris. ") == reply  # header template: no space to carry
    assert tok.decode_reply([*reply, tok.eot_id, *tok.encode("junk"), tok.eos_id]) == "Paris."
    assert tok.decode_reply([*reply, tok.eos_id, tok.eos_id]) == "Paris."
    assert tok.decode_reply(reply) == "Paris."


# --- bad tokenizer paths: one line, before anything slow (issue 21) -------------------------------
@pytest.mark.parametrize(
    ("name", "payload", "words"),
    [
        ("missing.model", None, "tokenizer path"),
        ("dir", "dir", "holds neither tokenizer.json nor tokenizer.model: pass the tokenizer file"),
        ("tok.txt", b"x", "cannot tell the tokenizer type"),
        ("bad.model", b"\x00not a model", "bad.model is not a sentencepiece model"),
        (
            "tokenizer.json",
            b'{"truncated": ',
            "tokenizer.json is not a Hugging Face tokenizer.json",
        ),
    ],
)
def test_load_tokenizer_one_line_errors(tmp_path, name, payload, words):
    path = tmp_path / name
    if payload == "dir":
        path.mkdir()
    elif payload is not None:
        path.write_bytes(payload)
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        T.load_tokenizer(path)
    assert words in str(e.value) and "\n" not in str(e.value)
