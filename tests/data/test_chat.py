"""Chat template and dialogues -> (prompt, answer) samples: layout, tokenisation, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lladax.data import chat, instructions, sources
from lladax.data.tokenizer import load_tokenizer


def _msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def _write_jsonl(path: Path, dialogues: list[list[dict]]) -> Path:
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in dialogues))
    return path


GOOD = [_msg("user", "Name a colour."), _msg("assistant", "Red.")]


def test_sentencepiece_chat_template_fallback(cache_dir):
    tok = load_tokenizer("embedded", vocab_size=2048, cache_dir=cache_dir)
    messages = [
        {"role": "user", "content": " Hi there "},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
    ]
    ids = chat.apply_chat_template(tok, messages)
    assert ids[0] == tok.bos_id and ids.count(tok.eot_id) == 3
    assert tok.decode(ids) == (
        "<s>User: Hi there<|eot_id|>Assistant: Hello.<|eot_id|>User: Bye<|eot_id|>Assistant:"
    )
    # the reply's first piece carries the space after "Assistant:", as in the earlier turn
    hello = chat.encode_reply(tok, " Hello. ")
    assert hello == tok.encode(" Hello.") and tok.decode_reply([*hello, tok.eot_id]) == "Hello."
    first = chat.apply_chat_template(tok, messages[:1])
    assert ids[: len(first) + len(hello)] == first + hello
    no_prompt = chat.apply_chat_template(tok, messages[:1], add_generation_prompt=False)
    assert tok.decode(no_prompt) == "<s>User: Hi there<|eot_id|>"
    with pytest.raises(ValueError):
        chat.apply_chat_template(tok, [])
    with pytest.raises(ValueError):
        chat.apply_chat_template(tok, [{"role": "user"}])


@pytest.mark.parametrize("vocab", [512, 2048])
def test_samples_tokenise_like_the_rendered_dialogue(cache_dir, vocab):
    """Regression (issue 10): the generation prompt ended in a lone " " piece and the reply's
    first word was encoded without its space, so it had a different id from the same word in the
    prompt (" line" vs "line") and a tokenisation that no encoded text contains: the small model
    could not learn to copy it and SFT stayed at 0-6 % exact match. Prompt + answer ids must be
    the tokenisation of the rendered turns, and every answer piece of the word tasks must occur
    in its prompt (the demo's 2048-piece tokenizer: each word ONE shared id)."""
    tok = load_tokenizer("embedded", vocab_size=vocab, cache_dir=cache_dir)
    items = instructions.examples(list(instructions.TASKS), "train", per_task=20)
    for ex in items + instructions.examples(list(instructions.TASKS), "eval", per_task=5):
        ((prompt, answer),) = chat.dialogue_samples(tok, ex.messages())
        rendered = [
            tok.bos_id,
            *tok.encode(f"User: {ex.prompt}"),
            tok.eot_id,
            *tok.encode(f"Assistant: {ex.answer}"),
            tok.eot_id,
        ]
        assert prompt + answer == rendered, ex
        assert prompt == chat.apply_chat_template(tok, ex.messages(with_answer=False))
        assert tok.decode_reply([*answer, tok.eos_id]) == ex.answer
        if ex.task != "add":
            assert set(answer[:-1]) <= set(prompt), ex
            if vocab == 2048:
                assert len(answer) - 1 == len(ex.answer.split()), ex


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([_msg("user", "hi")], r"jsonl:2: no assistant turn.*add the assistant's reply"),
        ([_msg("user", "hi"), _msg("robot", "x")], r"jsonl:2: unknown role 'robot': use one of"),
        ([_msg("assistant", "x")], r"starts with an assistant turn"),
        ([{"role": "user"}], r"needs a string 'role' and 'content'"),
        ([], r"non-empty list"),
    ],
)
def test_bad_dialogues_one_line_errors(tok, tmp_path, messages, match):
    path = _write_jsonl(tmp_path / "bad.jsonl", [GOOD, messages])
    with pytest.raises(sources.DataError, match=match) as e:
        chat.load_samples(tok, str(path), "all")
    assert "\n" not in str(e.value) and "bad.jsonl:2" in str(e.value)


def test_unreadable_chat_line_is_a_one_line_error(tmp_path):
    bad = tmp_path / "x.jsonl"
    bad.write_text('{"text": "not chat"}\n')
    with pytest.raises(
        sources.DataError,
        match=r"x.jsonl:1: expected a JSON object with a "
        r"'messages' list",
    ):
        chat.load_dialogues(bad, "all")
    with pytest.raises(FileNotFoundError, match="synthetic:all"):
        chat.load_dialogues(tmp_path / "nope.jsonl")


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (
            b'["messages"]\n',
            "x.jsonl:2: expected a JSON object with a 'messages' list, got a JSON array",
        ),
        (
            b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n',
            "x.jsonl:2: byte {at} is not valid UTF-8",
        ),
        (b'{"messages": [{"role": 1, "content": "x"}]}\n', "needs a string 'role' and 'content'"),
    ],
)
def test_bad_chat_lines_one_line_errors(tok, tmp_path, payload, words):
    """Issue 21: non-object lines, bytes that are not UTF-8 and non-string roles each name the
    file, line (and the byte offset in the file) instead of a bare UnicodeDecodeError."""
    first = (json.dumps({"messages": GOOD}) + "\n").encode()
    path = tmp_path / "x.jsonl"
    path.write_bytes(first + payload)
    with pytest.raises(sources.DataError) as e:
        chat.load_samples(tok, str(path), "all", cache_dir=tmp_path)
    assert words.format(at=len(first) + payload.find(b"\xe9")) in str(e.value)
    assert "\n" not in str(e.value)
