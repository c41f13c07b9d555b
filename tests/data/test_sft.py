"""SFT data: chat jsonl / synthetic set -> samples -> bucketed EOS-padded batches -> sft loss."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lladax.data import chat, instructions, sft, sources
from lladax.data import tokenizer as T
from lladax.diffusion import losses


def _write_jsonl(path: Path, dialogues: list[list[dict]]) -> Path:
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in dialogues))
    return path


def _msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


DIALOGUE = [
    _msg("system", "Be brief."),
    _msg("user", "Name a colour."),
    _msg("assistant", "Red."),
    _msg("user", "Another?"),
    _msg("assistant", " Blue. "),
    _msg("user", "Thanks"),
]


def _random_dialogues(n: int, seed: int) -> list[list[dict]]:
    rng = np.random.default_rng(seed)
    words = instructions.WORDS
    out = []
    for _ in range(n):
        turns = []
        for _ in range(int(rng.integers(1, 4))):
            turns += [
                _msg("user", " ".join(rng.choice(words, int(rng.integers(1, 12))))),
                _msg("assistant", " ".join(rng.choice(words, int(rng.integers(0, 8))))),
            ]
        out.append(turns)
    return out


def _check_batch(batch: dict, tok, batch_size: int, buckets: list[int]) -> None:
    """Layout invariants: [prompt | answer ... EOT | EOS+] with the prompt a chat prompt."""
    tokens, pl = batch["tokens"], batch["prompt_lengths"]
    assert tokens.dtype == np.int32 and pl.dtype == np.int32
    assert tokens.shape[0] == pl.shape[0] == batch_size and tokens.shape[1] in buckets
    for row, p in zip(tokens, pl, strict=True):
        assert 1 <= p < tokens.shape[1]
        answer = row[p:]
        eot = np.flatnonzero(answer == tok.eot_id)
        assert len(eot) == 1 and eot[0] < len(answer) - 1  # EOT, then at least one EOS
        assert np.all(answer[eot[0] + 1 :] == tok.eos_id)
        assert tok.eos_id not in answer[: eot[0]] and tok.mask_id not in row
        assert tok.decode(row[:p]).endswith("Assistant:")


# --- samples ------------------------------------------------------------------------------------
def test_multi_turn_split_gives_one_sample_per_assistant_turn(tok, tmp_path):
    samples = chat.dialogue_samples(tok, DIALOGUE)
    assert len(samples) == 2  # the trailing user turn has no reply: no sample
    (p1, a1), (p2, a2) = samples
    assert (
        tok.decode(p1) == "<s>System: Be brief.<|eot_id|>User: Name a colour.<|eot_id|>Assistant:"
    )
    assert tok.decode(p2) == (
        "<s>System: Be brief.<|eot_id|>User: Name a colour.<|eot_id|>"
        "Assistant: Red.<|eot_id|>User: Another?<|eot_id|>Assistant:"
    )
    # the reply's first piece carries the space after "Assistant:" (as inside p2's first turn)
    assert a1 == [*tok.encode(" Red."), tok.eot_id] and a2 == [*tok.encode(" Blue."), tok.eot_id]
    assert p1 + a1[:-1] == p2[: len(p1) + len(a1) - 1]
    # the prompt is exactly what a user would feed at inference
    assert p2 == chat.apply_chat_template(tok, DIALOGUE[:4])

    # end to end through the jsonl reader and the batcher: rows = the samples, EOS-padded
    path = _write_jsonl(tmp_path / "chat.jsonl", [DIALOGUE])
    batches = sft.make_sft_batches(
        tok, source=str(path), seq_len=128, batch_size=2, seed=0, split="all"
    )
    assert batches.stats["truncated_prompts"] == 0
    batch = next(iter(batches))
    _check_batch(batch, tok, 2, batches.bucket_lengths)
    rows = {
        tuple(r[:p]): r[p:] for r, p in zip(batch["tokens"], batch["prompt_lengths"], strict=True)
    }
    assert set(rows) == {tuple(p1), tuple(p2)}
    for prompt, answer in samples:
        got = rows[tuple(prompt)]
        assert list(got[: len(answer)]) == answer and set(got[len(answer) :]) == {tok.eos_id}


def test_golden_sft_loss_through_the_batch_layout(tiny_llada, golden):
    """Samples cut from the golden batch and re-collated give back the golden x0 / prompt
    lengths, and the loss of the collated batch is the golden loss."""
    cfg, params = tiny_llada
    case = golden("sft_loss")
    x0, pl = case["x0"], case["prompt_lengths"]
    pairs = []
    for row, p in zip(x0, pl, strict=True):
        answer = row[p:]
        keep = len(answer) - np.argmax(answer[::-1] != cfg.eos_token_id)  # strip EOS padding
        pairs.append((row[:p], answer[:keep]))
    batch = sft.collate(pairs, x0.shape[1], cfg.eos_token_id)
    np.testing.assert_array_equal(batch["tokens"], x0)
    np.testing.assert_array_equal(batch["prompt_lengths"], pl)
    loss = losses.sft_loss(
        params,
        cfg,
        jnp.asarray(batch["tokens"]),
        jnp.asarray(case["noisy"]),
        jnp.asarray(case["p_mask"]),
        jnp.asarray(batch["prompt_lengths"]),
    )
    np.testing.assert_allclose(float(loss), float(case["loss"]), rtol=1e-5, atol=1e-6)


def test_prompts_never_masked_property(tok, tmp_path):
    """Over random dialogues, seeds and noise keys: the forward process of the SFT path never
    touches a prompt position, and every answer position (EOS pads included) can be masked."""
    path = _write_jsonl(tmp_path / "random.jsonl", _random_dialogues(60, seed=1))
    for seed, source in itertools.product(range(3), (str(path), "synthetic:all")):
        batches = sft.make_sft_batches(
            tok,
            source=source,
            seq_len=48,
            batch_size=8,
            seed=seed,
            split="all" if source == str(path) else "eval",
        )
        it = iter(batches)
        for k in range(4):
            batch = next(it)
            _check_batch(batch, tok, 8, batches.bucket_lengths)
            tokens, pl = jnp.asarray(batch["tokens"]), jnp.asarray(batch["prompt_lengths"])
            key = jax.random.key(100 * seed + k)
            noisy, p_mask, masked = losses.mask_tokens(key, tokens, tok.mask_id, prompt_lengths=pl)
            pos = np.arange(tokens.shape[1])[None, :]
            prompt = pos < np.asarray(pl)[:, None]
            assert not np.asarray(masked)[prompt].any()
            np.testing.assert_array_equal(np.asarray(noisy)[prompt], batch["tokens"][prompt])
            np.testing.assert_array_equal(np.asarray(noisy == tok.mask_id), np.asarray(masked))
            # same draw without prompt protection: the answer part is identical, so only the
            # prompt positions differ (the noise itself is the pretraining noise)
            free, p_free, _ = losses.mask_tokens(key, tokens, tok.mask_id)
            np.testing.assert_array_equal(np.asarray(free)[~prompt], np.asarray(noisy)[~prompt])
            np.testing.assert_array_equal(np.asarray(p_free), np.asarray(p_mask))
    # with t near 1 every answer position (EOS padding included) is masked
    tokens, pl = jnp.asarray(batch["tokens"]), jnp.asarray(batch["prompt_lengths"])
    _, _, masked = losses.mask_tokens(
        jax.random.key(0), tokens, tok.mask_id, eps=1.0, prompt_lengths=pl
    )
    np.testing.assert_array_equal(np.asarray(masked), ~prompt)


# --- batching -----------------------------------------------------------------------------------
def test_batches_deterministic_resumable_and_cover_each_epoch(tok, tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", _random_dialogues(40, seed=2))
    make = lambda seed: sft.make_sft_batches(
        tok, source=str(path), seq_len=64, batch_size=4, seed=seed, split="all"
    )
    batches = make(0)
    n_samples, per_epoch = batches.stats["samples"], batches.batches_per_epoch
    assert per_epoch == n_samples // 4  # leftovers move up a bucket: < one batch dropped
    a, b = iter(batches), iter(make(0))
    first = [next(a) for _ in range(per_epoch + 3)]
    for x, y in zip(first, (next(b) for _ in first), strict=True):
        np.testing.assert_array_equal(x["tokens"], y["tokens"])
    other = [next(iter(make(1)))["tokens"]]
    assert not all(np.array_equal(x["tokens"], y) for x, y in zip(first, other, strict=False))
    # one epoch holds every sample at most once, all but < batch_size of them
    rows = [tuple(r[r != tok.eos_id]) for x in first[:per_epoch] for r in x["tokens"]]
    assert len(set(rows)) == len(rows) == per_epoch * 4 >= n_samples - 3
    # the next epoch is a different order
    assert not np.array_equal(first[0]["tokens"], first[per_epoch]["tokens"])
    # resume from a mid-stream state
    c = iter(make(0))
    for _ in range(5):
        next(c)
    state = c.get_state()
    expected = [next(c) for _ in range(3)]
    d = iter(make(0))
    d.set_state(state)
    for x in expected:
        np.testing.assert_array_equal(next(d)["tokens"], x["tokens"])
    # hosts take disjoint rows of the same global batch (same bucket length)
    hosts = [
        next(
            iter(
                sft.make_sft_batches(
                    tok,
                    source=str(path),
                    seq_len=64,
                    batch_size=2,
                    seed=0,
                    split="all",
                    process_index=i,
                    process_count=2,
                )
            )
        )
        for i in range(2)
    ]
    assert hosts[0]["tokens"].shape == hosts[1]["tokens"].shape
    np.testing.assert_array_equal(np.concatenate([h["tokens"] for h in hosts]), first[0]["tokens"])


def _regions(batches, n: int, eos_id: int) -> dict[int, list[tuple[int, int]]]:
    """Prompt length (leading EOS excluded) -> (leading EOS count, answer-region length) of every
    row in the first n batches."""
    it, out = iter(batches), {}
    for _ in range(n):
        batch = next(it)
        for row, p in zip(batch["tokens"], batch["prompt_lengths"], strict=True):
            k = int(np.argmax(row != eos_id))  # leading EOS, then the prompt's BOS
            assert k < p and np.all(row[:k] == eos_id)
            out.setdefault(int(p) - k, []).append((k, len(row) - int(p)))
    return out


def test_random_offset_varies_the_answer_region(tok):
    """Regression (issue 10): with one prompt length per task, plain right padding gives every
    row of a task the same answer-region length, which the model learned to rely on (empty
    answers on a sampler canvas of another length). random_offset starts rows with random EOS
    runs: the region then varies from the answer span to the bucket's rest, k = 0 included."""
    kw = dict(source="synthetic:copy", seq_len=64, batch_size=16, split="eval", min_answer_len=6)
    plain = sft.make_sft_batches(tok, seed=0, **kw)
    for rows in _regions(plain, plain.batches_per_epoch, tok.eos_id).values():
        assert {k for k, _ in rows} == {0} and len({r for _, r in rows}) == 1  # the mechanism

    shifted = sft.make_sft_batches(tok, seed=0, random_offset=True, **kw)
    assert shifted.stats["samples"] == plain.stats["samples"]
    longest = max(shifted.bucket_lengths)
    groups = _regions(shifted, 4 * shifted.batches_per_epoch, tok.eos_id)
    for p_len, rows in groups.items():
        regions = {r for _, r in rows}
        assert min(regions) >= 6 and max(regions) <= longest - p_len
        assert len(regions) > 1 or len(rows) < 20
    offsets = {k for rows in groups.values() for k, _ in rows}
    assert 0 in offsets and len(offsets) > 3
    again = sft.make_sft_batches(tok, seed=0, random_offset=True, **kw)
    for x, y in zip(
        itertools.islice(iter(shifted), 5), itertools.islice(iter(again), 5), strict=True
    ):
        np.testing.assert_array_equal(x["tokens"], y["tokens"])  # deterministic in the seed
        _check_batch(x, tok, 16, shifted.bucket_lengths)
    # hosts take their rows of one global batch, offsets included
    hosts = [
        next(
            iter(
                sft.make_sft_batches(
                    tok,
                    seed=0,
                    random_offset=True,
                    process_index=i,
                    process_count=2,
                    **{**kw, "batch_size": 8},
                )
            )
        )
        for i in range(2)
    ]
    one = next(iter(shifted))
    for key in ("tokens", "prompt_lengths"):
        np.testing.assert_array_equal(np.concatenate([h[key] for h in hosts]), one[key])


def test_choose_buckets_is_optimal_and_bounds_shapes(tok):
    rng = np.random.default_rng(0)
    seq_len = 200
    grid = sft.bucket_grid(seq_len)
    assert grid == [16, 24, 32, 48, 64, 96, 128, 192, 200]
    for trial in range(20):
        lengths = rng.integers(2, seq_len + 1, int(rng.integers(1, 80)))
        if trial % 2:
            lengths = np.minimum(lengths, 70)
        k = int(rng.integers(1, 5))
        chosen = sft.choose_buckets(lengths, seq_len, k)
        top = min(g for g in grid if g >= lengths.max())

        def cost(bs, lengths=lengths):
            bs = np.asarray(sorted(bs))
            return int(bs[np.searchsorted(bs, lengths)].sum())

        feasible = [
            (*c, top)
            for r in range(k)
            for c in itertools.combinations([g for g in grid if g < top], r)
        ]
        assert len(chosen) <= k and chosen[-1] == top
        assert cost(chosen) == min(cost(c) for c in feasible)
    batches = sft.make_sft_batches(
        tok, source="synthetic:all", seq_len=256, batch_size=16, seed=0, split="eval", num_buckets=3
    )
    it = iter(batches)
    shapes = {next(it)["tokens"].shape[1] for _ in range(batches.batches_per_epoch)}
    assert shapes <= set(batches.bucket_lengths) and len(batches.bucket_lengths) <= 3
    assert max(batches.bucket_lengths) < 256  # short data does not pay for seq_len


def test_long_prompts_truncated_from_the_left_and_counted(tok, tmp_path):
    long_user = " ".join(f"word{i}" for i in range(60))
    dialogues = [
        [_msg("user", long_user), _msg("assistant", "ok")],
        [_msg("user", "hi"), _msg("assistant", " ".join(["long"] * 60))],
        [_msg("user", "hi"), _msg("assistant", "short")],
    ]
    path = _write_jsonl(tmp_path / "long.jsonl", dialogues)
    samples = chat.load_samples(tok, str(path), "all")
    fitted, stats = sft.fit_to_length(samples, 32, tok.mask_id)
    assert stats == {
        "samples": 2,
        "truncated_prompts": 1,
        "dropped_long_answers": 1,
        "dropped_mask_token": 0,
    }
    (p0, a0), (p1, _) = fitted.get(0), fitted.get(1)
    full_prompt, full_answer = samples.get(0)
    assert len(p0) + len(a0) + 1 == 32  # room for one EOS exactly
    np.testing.assert_array_equal(p0, full_prompt[-len(p0) :])  # the end of the prompt is kept
    np.testing.assert_array_equal(a0, full_answer)
    np.testing.assert_array_equal(p1, samples.get(2)[0])
    batches = sft.make_sft_batches(
        tok, source=str(path), seq_len=32, batch_size=2, seed=0, split="all"
    )
    assert batches.stats["truncated_prompts"] == 1 and batches.stats["dropped_long_answers"] == 1
    _check_batch(next(iter(batches)), tok, 2, batches.bucket_lengths)


# --- bad input ----------------------------------------------------------------------------------
def test_bad_sources_and_tokenizer(tok, tmp_path):
    with pytest.raises(FileNotFoundError, match="synthetic:all"):
        sft.make_sft_batches(
            tok, source=str(tmp_path / "nope.jsonl"), seq_len=64, batch_size=1, seed=0
        )
    with pytest.raises(ValueError, match=r"unknown synthetic task\(s\) \['nope'\]"):
        sft.make_sft_batches(tok, source="synthetic:copy,nope", seq_len=64, batch_size=1, seed=0)
    with pytest.raises(sources.DataError, match="fewer than one batch"):
        sft.make_sft_batches(
            tok,
            source=str(_write_jsonl(tmp_path / "one.jsonl", [DIALOGUE])),
            seq_len=64,
            batch_size=8,
            seed=0,
            split="all",
        )
    # a tokenizer without the chat special tokens (no <|eot_id|>, no mask)
    from tokenizers import Tokenizer, models, pre_tokenizers

    hf = Tokenizer(models.WordLevel({"[UNK]": 0, "<s>": 1, "</s>": 2, "hi": 3}, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.save(str(tmp_path / "tokenizer.json"))
    plain = T.HFTokenizer(tmp_path / "tokenizer.json")
    with pytest.raises(
        ValueError,
        match=r"lacks the chat special token\(s\) \['eot', 'mask'\]"
        r".*use the model's own tokenizer",
    ):
        sft.make_sft_batches(plain, source="synthetic:copy", seq_len=64, batch_size=1, seed=0)


# --- the synthetic instruction set ---------------------------------------------------------------
def test_synthetic_set_deterministic_disjoint_and_correct():
    tasks = instructions.parse_source("synthetic:all")
    assert tasks == list(instructions.TASKS)
    assert instructions.parse_source("synthetic:sort,copy") == ["copy", "sort"]
    train = instructions.examples(tasks, "train", per_task=300)
    heldout = instructions.examples(tasks, "eval", per_task=100)
    assert train == instructions.examples(tasks, "train", per_task=300)
    assert train != instructions.examples(tasks, "train", per_task=300, seed=1)
    assert not {e.prompt for e in train} & {e.prompt for e in heldout}
    assert len({e.prompt for e in heldout}) == len(heldout) == 500
    for ex in train + heldout:  # answers recomputed independently from the prompt text
        head, _, body = ex.prompt.partition(": ")
        words = body.split()
        if ex.task == "copy":
            expected = body
        elif ex.task in ("reverse", "sort"):
            expected = " ".join(words[::-1] if ex.task == "reverse" else sorted(words))
        elif ex.task == "add":
            expected = str(int(words[0]) + int(words[2]))
        else:
            expected = dict(zip(words[::3], words[2::3], strict=True))[head.split()[1]]
            assert words[1::3] == ["="] * 3
        assert ex.answer == expected and instructions.exact_match(f"  {expected}\n", ex.answer)
    assert not instructions.exact_match("file list", "list file")
    acc = instructions.accuracy_by_task(
        heldout[:2] + heldout[100:101], [heldout[0].answer, "wrong", heldout[100].answer]
    )
    assert acc == {"copy": 0.5, "reverse": 1.0}


def test_min_answer_len_pads_every_row_to_the_sampled_canvas(tok):
    """Every row has >= min_answer_len positions after its prompt (the sampler's gen_length), so
    generation never asks about positions the model was not trained on; it costs no samples."""
    plain = sft.make_sft_batches(
        tok, source="synthetic:copy,lookup", seq_len=64, batch_size=16, seed=0, split="eval"
    )
    padded = sft.make_sft_batches(
        tok,
        source="synthetic:copy,lookup",
        seq_len=64,
        batch_size=16,
        seed=0,
        split="eval",
        min_answer_len=12,
    )
    assert padded.stats["samples"] == plain.stats["samples"]
    it, it0 = iter(padded), iter(plain)
    short = 0
    for _ in range(padded.batches_per_epoch):
        batch = next(it)
        _check_batch(batch, tok, 16, padded.bucket_lengths)
        assert np.all(batch["tokens"].shape[1] - batch["prompt_lengths"] >= 12)
        b0 = next(it0)
        short += int(np.sum(b0["tokens"].shape[1] - b0["prompt_lengths"] < 12))
    assert short > 0  # without it, some rows end before the canvas a gen_length 12 sampler uses
    samples = chat.load_samples(tok, "synthetic:copy", "eval")
    fitted, stats = sft.fit_to_length(samples, 20, tok.mask_id, min_answer_len=6)
    assert np.all(fitted.prompt_len + np.maximum(fitted.answer_len + 1, 6) <= 20)
    assert stats["truncated_prompts"] == stats["samples"] > 0  # prompts cut to make the room
    with pytest.raises(ValueError, match=r"min_answer_len=64 must be in \[0, seq_len=64\)"):
        sft.make_sft_batches(
            tok, source="synthetic:copy", seq_len=64, batch_size=1, seed=0, min_answer_len=64
        )
