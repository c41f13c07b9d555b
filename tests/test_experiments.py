"""lladax.experiments: the synthetic data is what the docs say, the scoring is right, and every
experiment command runs end to end in a tiny setting (JSON + PNG written)."""

import json

import numpy as np
import pytest

from lladax.cli import main
from lladax.experiments import common, reversal, sampler, scaling


def test_mean_ci_is_the_student_t_interval():
    got = common.mean_ci([0.2, 0.4, 0.9])
    sd = np.std([0.2, 0.4, 0.9], ddof=1)
    assert got["mean"] == pytest.approx(0.5)
    assert got["ci95"] == pytest.approx(4.303 * sd / np.sqrt(3), rel=1e-4)
    assert np.isnan(common.mean_ci([0.3])["ci95"])


def test_reversal_documents_state_each_fact_one_way_and_questions_for_the_train_half():
    pairs = reversal.make_pairs(10, 6, np.random.default_rng(0))
    assert len({tuple(p[:2]) for p in pairs} | {tuple(p[2:]) for p in pairs}) == 20  # distinct
    docs = reversal.documents(pairs, n_train=5)
    assert docs.shape == (10 + 5 + 5, reversal.ROW)
    facts = {tuple(d[1:3]): tuple(d[4:6]) for d in docs if d[3] == reversal.ARROW}
    assert facts == {tuple(p[:2]): tuple(p[2:]) for p in pairs}
    asked = {tuple(d[2:4]) for d in docs if d[1] in (reversal.FOLLOWS, reversal.PRECEDES)}
    held_out = {tuple(p[:2]) for p in pairs[5:]} | {tuple(p[2:]) for p in pairs[5:]}
    assert not asked & held_out  # no question about a held-out pair is ever trained
    # A trained question's prompt is the prefix of its document; its answer the next 2 tokens.
    prompts, answers = reversal.queries(pairs[:5], "reverse")
    rev_docs = docs[15:]
    np.testing.assert_array_equal(rev_docs[:, :5], prompts)
    np.testing.assert_array_equal(rev_docs[:, 5:7], answers)


def test_progression_validity():
    rows = sampler.progressions(50, 6, 16, 3, np.random.default_rng(0))
    starts, replies = rows[:, 1], rows[:, 2:]
    assert sampler.valid(replies, starts, 16, 3).all()
    mixed = replies.copy()
    mixed[:, 2] = sampler.FIRST_ENTITY + (mixed[:, 2] - sampler.FIRST_ENTITY + 1) % 16
    assert not sampler.valid(mixed, starts, 16, 3).any()  # two different steps
    no_eos = replies.copy()
    no_eos[:, -1] = sampler.FIRST_ENTITY
    assert not sampler.valid(no_eos, starts, 16, 3).any()
    too_big = sampler.progressions(20, 6, 16, 8, np.random.default_rng(1))
    big_step = (too_big[:, 2] - too_big[:, 1]) % 16 > 3
    assert (sampler.valid(too_big[:, 2:], too_big[:, 1], 16, 3) == ~big_step).all()


def test_continuation_pairs_shuffle_the_same_tokens():
    stream = np.arange(1000) % 97
    pairs = scaling.continuation_pairs(stream, 5, 8, 8, seed=0)
    for prompt, real, shuffled in pairs:
        assert len(prompt) == 8 and sorted(real) == sorted(shuffled)
        assert not np.array_equal(real, shuffled)
    with pytest.raises(ValueError, match="need"):
        scaling.continuation_pairs(stream, 100, 8, 8, seed=0)


def _ran(out, name):
    result = json.loads((out / f"{name}.json").read_text())
    assert (out / f"{name}.png").stat().st_size > 1000
    assert result["provenance"]["date"] and result["experiment"] == name
    return result


def test_reversal_command_runs_tiny(tmp_path, capsys):
    assert main(["experiment", "reversal", "--seeds", "0", "1", "--pairs", "8", "--entities",
                 "8", "--steps", "4", "--size", "tiny", "--out", str(tmp_path)]) == 0
    result = _ran(tmp_path, "reversal")
    gap = result["summary"]["autoregressive"]["heldout_gap"]
    assert gap["n"] == 2 and np.isfinite(gap["ci95"])
    assert "wrote" in capsys.readouterr().out


def test_sampler_command_runs_tiny(tmp_path):
    assert main(["experiment", "sampler", "--steps", "3", "--length", "2", "--modulus", "8",
                 "--max-step", "2", "--queries", "8", "--out", str(tmp_path)]) == 0
    result = _ran(tmp_path, "sampler")
    assert [r["steps"] for r in result["steps"]["random"]] == [1, 2]
    assert [r["block_length"] for r in result["blocks"]] == [1, 2]


def test_scaling_command_runs_tiny(tmp_path):
    assert main(["experiment", "scaling", "--sizes", "xs", "--steps", "2", "--eval-batches",
                 "1", "--noise-draws", "1", "--pairs", "4", "--mc", "4", "--out",
                 str(tmp_path)]) == 0
    result = _ran(tmp_path, "scaling")
    assert [r["kind"] for r in result["runs"]] == ["diffusion", "autoregressive"]
    assert all(0 <= r["ranking"] <= 1 and r["heldout_loss"] > 0 for r in result["runs"])


def test_bad_settings_are_one_line_errors(tmp_path, capsys):
    assert main(["experiment", "reversal", "--pairs", "100", "--entities", "4"]) == 2
    assert "distinct sides" in capsys.readouterr().err
