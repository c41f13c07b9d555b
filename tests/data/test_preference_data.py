"""Preference data: pair jsonl / synthetic near misses -> paired, bucketed, EOS-padded batches."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from lladax.data import chat, instructions, preference, preflight, sft
from lladax.data.sources import DataError


def _msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


HISTORY = [_msg("system", "Be brief."), _msg("user", "Hi"), _msg("assistant", "Hello.")]
LAYOUTS = {  # the three layouts of an answer
    "string": lambda text: text,
    "object": lambda text: _msg("assistant", text),
    "list": lambda text: [_msg("assistant", text)],
}


def _layout_rows() -> list[tuple[dict, list[dict], str, str]]:
    """(jsonl row, messages before the answer, chosen text, rejected text): every answer layout
    with both prompt forms."""
    out = []
    for k, (name, wrap) in enumerate(LAYOUTS.items()):
        chosen, rejected = f"The {name} answer {k}.", f"A worse {name} reply"
        question = f"Question {k} about {name}?"
        by_prompt = {"prompt": question, "chosen": wrap(chosen), "rejected": wrap(rejected)}
        out.append((by_prompt, [_msg("user", question)], chosen, rejected))
        messages = [*HISTORY, _msg("user", question + " again")]
        by_messages = {"messages": messages, "chosen": wrap(rejected), "rejected": wrap(chosen)}
        out.append((by_messages, messages, rejected, chosen))
    return out


def _check_row(row: np.ndarray, p: int, prompt: list[int], reply: list[int], tok) -> None:
    assert list(row[:p]) == prompt
    assert list(row[p : p + len(reply)]) == reply and reply[-1] == tok.eot_id
    assert len(row) > p + len(reply) and set(row[p + len(reply) :].tolist()) == {tok.eos_id}


# --- layout ---------------------------------------------------------------------------------------
def test_rows_decode_back_for_every_layout_and_prompt_form(tok, tmp_path):
    cases = _layout_rows()
    path = _write(tmp_path / "pairs.jsonl", [row for row, *_ in cases])
    pairs = preference.load_pairs(str(path), "all")
    assert [(p.messages, p.chosen, p.rejected) for p in pairs] == [c[1:] for c in cases]
    assert pairs[0].where == f"{path}:1"
    batches = preference.make_preference_batches(
        tok, source=str(path), seq_len=128, batch_size=len(cases), seed=0, split="all"
    )
    assert batches.batches_per_epoch == 1 and batches.stats["samples"] == len(cases)
    batch = next(iter(batches))
    assert set(batch) == {"chosen", "rejected", "prompt_lengths"}
    assert all(v.dtype == np.int32 for v in batch.values())
    assert batch["chosen"].shape == batch["rejected"].shape
    assert batch["chosen"].shape[1] in batches.bucket_lengths
    seen = set()
    for chosen, rejected, p in zip(*batch.values(), strict=True):
        prompt = [int(t) for t in chosen[:p]]
        (_, messages, good, bad) = next(
            c for c in cases if chat.apply_chat_template(tok, c[1]) == prompt
        )
        seen.add(json.dumps(messages))
        assert tok.decode(prompt).endswith("Assistant:")
        _check_row(chosen, p, prompt, [*chat.encode_reply(tok, good), tok.eot_id], tok)
        _check_row(rejected, p, prompt, [*chat.encode_reply(tok, bad), tok.eot_id], tok)
    assert len(seen) == len(cases)


# --- bad rows -------------------------------------------------------------------------------------
_FORMS = (
    "write {'prompt': str, 'chosen': str, 'rejected': str} (or 'messages' ending with the user "
    "turn instead of 'prompt') per line"
)
_ANSWER = "a string, an {'role': 'assistant', 'content': str} object or a list of one"
BAD_ROWS = [
    (
        "{not json",
        "expected a JSON object with 'prompt' (or 'messages'), 'chosen', 'rejected' "
        "(JSONDecodeError: Expecting property name enclosed in double quotes: line 1 column 2 "
        "(char 1)): fix the line (one JSON object per line)",
    ),
    (
        [1, 2],
        "expected a JSON object with 'prompt' (or 'messages'), 'chosen', 'rejected', got a JSON "
        "array: write one JSON object per line",
    ),
    (
        {"chosen": "a", "rejected": "b"},
        f"a pair needs exactly one of 'prompt' or 'messages', it has neither: {_FORMS}",
    ),
    (
        {"prompt": "q", "messages": [_msg("user", "q")], "chosen": "a", "rejected": "b"},
        f"a pair needs exactly one of 'prompt' or 'messages', it has both: {_FORMS}",
    ),
    ({"prompt": "q", "rejected": "b"}, f"no 'chosen' answer: add 'chosen' ({_ANSWER})"),
    ({"prompt": "q", "chosen": "a"}, f"no 'rejected' answer: add 'rejected' ({_ANSWER})"),
    (
        {"prompt": "q", "chosen": "  ", "rejected": "b"},
        "'chosen' is empty: give the answer text or remove the pair",
    ),
    (
        {"prompt": "q", "chosen": "a", "rejected": 3},
        f"'rejected' must be {_ANSWER}, got int: fix the line",
    ),
    (
        {"prompt": "q", "chosen": ["a", "b"], "rejected": "b"},
        f"'chosen' must be {_ANSWER}, got a list of 2: fix the line",
    ),
    (
        {"prompt": "q", "chosen": _msg("user", "a"), "rejected": "b"},
        "'chosen' must be an assistant message with a string 'content', got {'role': 'user', "
        "'content': 'a'}: write {'role': 'assistant', 'content': ...}",
    ),
    (
        {"prompt": 7, "chosen": "a", "rejected": "b"},
        "'prompt' must be a non-empty string: fix the line",
    ),
    (
        {"messages": [], "chosen": "a", "rejected": "b"},
        "'messages' must be a non-empty list of {'role': ..., 'content': ...} objects ending "
        "with the user turn",
    ),
    (
        {"messages": [_msg("robot", "q")], "chosen": "a", "rejected": "b"},
        "unknown role 'robot': use one of ('system', 'user', 'assistant')",
    ),
    (
        {"messages": [_msg("user", "q"), _msg("assistant", "a")], "chosen": "a", "rejected": "b"},
        "'messages' ends with a 'assistant' turn, not the user turn the answers reply to: put "
        "the answers in 'chosen' / 'rejected' only",
    ),
    (
        {"prompt": "q", "chosen": "same", "rejected": [_msg("assistant", " same ")]},
        "'chosen' and 'rejected' are the same answer, so the pair has no preference signal: "
        "fix or remove the pair",
    ),
]


@pytest.mark.parametrize(("row", "message"), BAD_ROWS)
def test_malformed_rows_are_one_line_errors_naming_file_line(tmp_path, row, message):
    good = {"prompt": "q", "chosen": "a", "rejected": "b"}
    path = _write(tmp_path / "bad.jsonl", [good, row])
    with pytest.raises(DataError) as e:
        preference.load_pairs(str(path), "all")
    assert str(e.value) == f"{path}:2: {message}" and "\n" not in str(e.value)
    first = _write(tmp_path / "first.jsonl", [row, good])  # preflight reads the first row only
    with pytest.raises(DataError) as e:
        preflight.check_source(str(first), fmt="preference")
    assert str(e.value) == f"{first}:1: {message}"


def test_bad_sources_and_empty_splits(tok, tmp_path):
    with pytest.raises(DataError, match="does not exist: pass a .jsonl file"):
        preference.load_pairs(str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match=r"expected a \.jsonl file or a directory holding some"):
        preference.load_pairs(str(_write(tmp_path / "x.txt", ["hi"])))
    tiny = _write(tmp_path / "tiny.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    split = (
        "eval"
        if preference.split_of_pair(preference.load_pairs(str(tiny), "all")[0]) == "train"
        else "train"
    )
    with pytest.raises(DataError, match=f"no pairs in split '{split}'.*use split='all'"):
        preference.load_pairs(str(tiny), split)
    with pytest.raises(DataError, match="1 usable pairs, fewer than one batch of 4: add pairs"):
        preference.make_preference_batches(
            tok, source=str(tiny), seq_len=32, batch_size=2, seed=0, split="all", process_count=2
        )


def test_preflight_accepts_and_refuses(tmp_path):
    (tmp_path / "d").mkdir()
    good = _write(tmp_path / "d" / "a.jsonl", [r for r, *_ in _layout_rows()])
    for source in (str(good), str(good.parent), "synthetic:all", "synthetic:copy,add"):
        preflight.check_source(source, fmt="preference")
    with pytest.raises(DataError, match=r"unknown synthetic task\(s\) \['nope'\]"):
        preflight.check_source("synthetic:nope", fmt="preference")
    with pytest.raises(DataError, match="for format='preference'"):
        preflight.check_source(" ", fmt="preference")
    with pytest.raises(DataError, match="does not exist"):
        preflight.check_source(str(tmp_path / "none.jsonl"), fmt="preference")


# --- synthetic near misses ------------------------------------------------------------------------
def test_near_miss_differs_and_is_deterministic():
    answers = [
        ex.answer for ex in instructions.examples(list(instructions.ALL_TASKS), "eval", per_task=20)
    ]
    answers += ["0", "7", "10", "99", "file", "Red.", "", "key key", "a  b\tc", "key key code"]
    rng = np.random.default_rng(0)
    for answer in answers:
        for _ in range(30):
            miss = preference.near_miss(answer, rng)
            assert not instructions.exact_match(miss, answer), (answer, miss)
        again = [preference.near_miss(answer, np.random.default_rng(s)) for s in range(5)]
        assert again == [preference.near_miss(answer, np.random.default_rng(s)) for s in range(5)]
    digits = {preference.near_miss("58", np.random.default_rng(s)) for s in range(50)}
    assert all(d.isdigit() and len(d) == 2 and d[0] != "0" for d in digits) and len(digits) > 5
    pairs = preference.load_pairs("synthetic:copy,add", "eval")
    assert pairs == preference.load_pairs("synthetic:copy,add", "eval")
    assert all(p.chosen != p.rejected and p.messages[-1]["role"] == "user" for p in pairs)
    edits = {
        len(p.rejected.split()) - len(p.chosen.split())
        for p in pairs
        if "Copy" in p.messages[0]["content"]
    }
    assert edits == {0, -1}  # swaps / replacements and drops all occur


# --- batches ------------------------------------------------------------------------------------
KW = dict(source="synthetic:all", seq_len=64, batch_size=8, split="eval")


def test_buckets_row_lengths_and_one_epoch(tok):
    batches = preference.make_preference_batches(tok, seed=0, num_buckets=2, **KW)
    assert len(batches.bucket_lengths) <= 2 and max(batches.bucket_lengths) < 64
    assert batches.stats["samples"] == 1000 and batches.batches_per_epoch == 125
    it, lengths = iter(batches), set()
    for _ in range(batches.batches_per_epoch):
        batch = next(it)
        length = batch["chosen"].shape[1]
        lengths.add(length)
        assert batch["rejected"].shape == (8, length) and batch["prompt_lengths"].shape == (8,)
        for c, r, p in zip(*batch.values(), strict=True):
            np.testing.assert_array_equal(c[:p], r[:p])  # the shared prompt
            for row in (c, r):
                eot = np.flatnonzero(row[p:] == tok.eot_id)
                assert len(eot) == 1 and p + eot[0] + 1 < length  # at least one EOS pad
                assert tok.mask_id not in row
    assert lengths <= set(batches.bucket_lengths)
    with_gen = preference.make_preference_batches(tok, seed=0, min_answer_len=20, **KW)
    batch = next(iter(with_gen))
    assert np.all(batch["chosen"].shape[1] - batch["prompt_lengths"] >= 20)


def test_deterministic_resumable_and_sharded(tok):
    small = {**KW, "source": "synthetic:copy,add", "seed": 0}
    make = lambda **kw: preference.make_preference_batches(tok, **{**small, **kw})
    first = list(itertools.islice(iter(make()), 6))
    for x, y in zip(first, itertools.islice(iter(make()), 6), strict=True):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    other = next(iter(make(seed=1)))
    assert not np.array_equal(other["chosen"], first[0]["chosen"])
    it = iter(make())
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(3)]
    resumed = iter(make())
    resumed.set_state(state)
    for x in expected:
        y = next(resumed)
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    hosts = [
        list(itertools.islice(iter(make(batch_size=4, process_index=i, process_count=2)), 3))
        for i in range(2)
    ]
    for step in range(3):
        for key in first[0]:
            halves = [hosts[i][step][key] for i in range(2)]
            np.testing.assert_array_equal(np.concatenate(halves), first[step][key])


def test_long_prompts_truncated_and_drops_counted(tok, tmp_path, caplog):
    long_prompt = " ".join(f"word{i}" for i in range(60))
    rows = [
        {"prompt": long_prompt, "chosen": "ok", "rejected": "no"},
        {"prompt": "hi", "chosen": "fine", "rejected": " ".join(["long"] * 60)},
        {"prompt": "hi", "chosen": "short", "rejected": "brief"},
    ]
    path = _write(tmp_path / "long.jsonl", rows)
    with caplog.at_level("WARNING"):
        batches = preference.make_preference_batches(
            tok, source=str(path), seq_len=32, batch_size=2, seed=0, split="all"
        )
    assert {
        k: batches.stats[k] for k in ("samples", "truncated_prompts", "dropped_long_answers")
    } == {
        "samples": 2,
        "truncated_prompts": 1,
        "dropped_long_answers": 1,
    }
    assert (
        "1 prompts truncated" in caplog.text and "1 pairs dropped (answer too long)" in caplog.text
    )
    batch = next(iter(batches))
    full = chat.apply_chat_template(tok, [_msg("user", long_prompt)])
    k = int(np.argmax(batch["prompt_lengths"]))  # the truncated prompt fills its row
    row, p = batch["chosen"][k], int(batch["prompt_lengths"][k])
    assert list(row[:p]) == full[-int(p) :]  # the end of the prompt is kept
    assert p + len(chat.encode_reply(tok, "ok")) + 2 == 32  # reply, EOT, one EOS: the room left
    # a literal mask id anywhere in a pair drops it, counted
    pairs = preference.tokenize_pairs(tok, preference.load_pairs(str(path), "all"))
    s = pairs.chosen
    tokens = s.tokens.copy()
    tokens[int(s.start[2] + s.prompt_len[2] + s.answer_len[2])] = tok.mask_id  # rejected's first
    masked = preference.PairSamples(
        chat.Samples(tokens, s.start, s.prompt_len, s.answer_len), pairs.rejected_len
    )
    fitted, stats, total = preference.fit_pairs(masked, 256, tok.mask_id)
    assert stats["dropped_mask_token"] == 1 and stats["samples"] == len(fitted.chosen) == 2
    longer = np.maximum(fitted.chosen.answer_len, fitted.rejected_len)
    np.testing.assert_array_equal(total, fitted.chosen.prompt_len + sft.answer_span(longer))
