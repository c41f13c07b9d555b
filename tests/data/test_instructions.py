"""The synthetic instruction set's long-answer tasks (`lladax.data.instructions.LONG_TASKS`), the
per-token score, and the short tasks' data unchanged by their arrival."""

import hashlib
import json

import pytest

from lladax.data import chat, instructions
from lladax.data.tokenizer import load_tokenizer


def test_short_tasks_data_unchanged():
    """The five short tasks draw exactly the examples they drew before the long tasks existed
    (the digest was taken from the code before them): "all" still means them."""
    assert instructions.parse_source("synthetic:all") == list(instructions.TASKS)
    assert list(instructions.TASKS) == ["copy", "reverse", "sort", "add", "lookup"]
    drawn = []
    for split, n in (("train", 300), ("eval", 60)):
        for seed in (0, 3):
            tasks = list(instructions.TASKS)
            items = instructions.examples(tasks, split, seed=seed, per_task=n)
            drawn += [[e.task, e.prompt, e.answer] for e in items]
    digest = hashlib.sha256(json.dumps(drawn).encode()).hexdigest()
    assert digest == "0becd5e92159b995d8be4b326703f1c026480e4c40c8d6014f9e53a717f3db0c"


def test_long_tasks_deterministic_disjoint_and_correct():
    tasks = instructions.parse_source("synthetic:long")
    assert tasks == ["long_copy", "long_reverse", "long_sort"] == list(instructions.LONG_TASKS)
    assert instructions.parse_source("synthetic:long_sort,copy") == ["copy", "long_sort"]
    train = instructions.examples(tasks, "train", per_task=60)
    heldout = instructions.examples(tasks, "eval", per_task=20)
    assert train == instructions.examples(tasks, "train", per_task=60)
    assert train != instructions.examples(tasks, "train", per_task=60, seed=1)
    assert not {e.prompt for e in train} & {e.prompt for e in heldout}
    assert len({e.prompt for e in heldout}) == len(heldout) == 60
    assert all(instructions.split_of(e.prompt) == "eval" for e in heldout)
    for ex in train + heldout:  # answers recomputed independently from the prompt text
        head, _, body = ex.prompt.partition(": ")
        words = body.split()
        assert len(words) == instructions.LONG_WORDS and set(words) <= set(instructions.WORDS)
        expected = {
            "long_copy": ("Copy", words),
            "long_reverse": ("Reverse", words[::-1]),
            "long_sort": ("Sort", sorted(words)),
        }[ex.task]
        assert (head, ex.answer) == (expected[0], " ".join(expected[1]))


def test_long_answers_are_long_in_the_embedded_tokenizer(cache_dir):
    """Every answer word is one token of the 2048-piece tokenizer, found in the prompt: an answer
    is LONG_WORDS >= 200 tokens (+ EOT), the length the decoding benchmark needs."""
    tok = load_tokenizer("embedded", vocab_size=2048, cache_dir=cache_dir)
    for ex in instructions.examples(list(instructions.LONG_TASKS), "eval", per_task=3):
        ((prompt, answer),) = chat.dialogue_samples(tok, ex.messages())
        assert len(answer) == instructions.LONG_WORDS + 1 >= 201 and answer[-1] == tok.eot_id
        assert set(answer[:-1]) <= set(prompt)
        assert tok.decode_reply([*answer, tok.eos_id]) == ex.answer


def test_token_accuracy_counts_words_in_place():
    ref = "file list value type"
    assert instructions.token_accuracy(ref, ref) == 1.0
    assert instructions.token_accuracy(" file  list value\ntype ", ref) == 1.0
    assert instructions.token_accuracy("file list key type", ref) == 0.75
    assert instructions.token_accuracy("file list", ref) == 0.5  # missing words miss
    assert instructions.token_accuracy(f"{ref} data data data data", ref) == 0.5  # so do extras
    assert instructions.token_accuracy("list value type", ref) == 0.0  # shifted by one
    assert instructions.token_accuracy("", "") == 1.0
    assert instructions.token_accuracy("file", "") == 0.0


@pytest.mark.parametrize(
    "source, message",
    [
        ("synthetic:long_copy,nope", r"unknown synthetic task\(s\) \['nope'\]"),
        ("synthetic:long,copy", r"unknown synthetic task\(s\) \['long'\].*'all' / 'long'"),
        ("synthetic:", r"unknown synthetic task\(s\) \[\]"),
    ],
)
def test_long_source_errors_name_the_tasks(source, message):
    with pytest.raises(ValueError, match=message) as e:
        instructions.parse_source(source)
    assert "long_copy" in str(e.value) and "\n" not in str(e.value)
