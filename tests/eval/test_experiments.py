"""lladax.eval.experiments: the synthetic data is what the docs say, the scoring is right, every
experiment command runs end to end in a tiny setting (JSON + PNG written), seeds aggregate to
mean ± CI, and every bad option is refused in milliseconds with nothing written."""

import json
import os
import sys

import numpy as np
import pytest
from conftest import tree_snapshot

from lladax.cli import main
from lladax.eval.experiments import common, reversal, sampler, scaling


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


@pytest.mark.slow  # ~30 s of training; its parts, summaries and refusals run in CI
def test_reversal_command_runs_tiny(tmp_path, capsys):
    assert (
        main(
            [
                "experiment",
                "reversal",
                "--seeds",
                "0",
                "1",
                "--pairs",
                "8",
                "--entities",
                "8",
                "--steps",
                "4",
                "--size",
                "tiny",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    result = _ran(tmp_path, "reversal")
    gap = result["summary"]["autoregressive"]["heldout_gap"]
    assert gap["n"] == 2 and np.isfinite(gap["ci95"])
    assert "wrote" in capsys.readouterr().out


@pytest.mark.slow  # ~50 s of compiles; its parts run in CI (fake seeds, refusals, summaries)
def test_sampler_command_runs_tiny_without_matplotlib(tmp_path, monkeypatch, capsys):
    # --no-plot is the way to run without the notebooks extra: JSON only, nothing imported.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert (
        main(
            [
                "experiment",
                "sampler",
                "--seeds",
                "0",
                "--steps",
                "3",
                "--length",
                "2",
                "--modulus",
                "8",
                "--max-step",
                "2",
                "--queries",
                "8",
                "--no-plot",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sampler.json"]
    assert capsys.readouterr().out.strip().endswith("sampler.json")
    seed = json.loads((tmp_path / "sampler.json").read_text())["per_seed"][0]
    assert [r["steps"] for r in seed["steps"]["random"]] == [1, 2]
    assert [r["block_length"] for r in seed["blocks"]] == [1, 2]


@pytest.mark.slow  # ~40 s of training; the scaling parts and refusals run in CI
def test_scaling_command_runs_tiny(tmp_path):
    assert (
        main(
            [
                "experiment",
                "scaling",
                "--sizes",
                "xs",
                "--steps",
                "2",
                "--eval-batches",
                "1",
                "--noise-draws",
                "1",
                "--pairs",
                "4",
                "--mc",
                "4",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    result = _ran(tmp_path, "scaling")
    assert [(r["kind"], r["seed"]) for r in result["runs"]] == [
        ("diffusion", 0),
        ("autoregressive", 0),
    ]
    assert result["summary"][0]["ranking"]["ci95"] is None  # one seed: no interval, valid JSON
    assert all(0 <= r["ranking"] <= 1 and r["heldout_loss"] > 0 for r in result["runs"])


# --- several seeds: mean ± CI from per-seed numbers (fake ones: no training) ------------------
def _fake_sampler_seed(seed, args, log=print):
    """run_seed's layout with numbers that depend on the seed (length 2: counts 1, 2)."""
    v = lambda i: round(0.1 * seed + 0.05 * i, 3)
    return {
        "seed": seed,
        "steps": {
            r: [{"steps": s, "valid": v(s + k)} for s in (1, 2)]
            for k, r in enumerate(("low_confidence", "random"))
        },
        "blocks": [{"block_length": b, "valid": v(b + 5)} for b in (1, 2)],
        "autoregressive_valid": v(9),
    }


FAKE = ["--length", "2", "--modulus", "8", "--max-step", "2"]


def test_sampler_seeds_aggregate_to_mean_and_ci(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sampler, "run_seed", _fake_sampler_seed)
    assert (
        main(["experiment", "sampler", "--seeds", "0", "1", "2", *FAKE, "--out", str(tmp_path)])
        == 0
    )
    result = _ran(tmp_path, "sampler")
    assert [s["seed"] for s in result["per_seed"]] == [0, 1, 2]
    low = result["summary"]["steps"]["low_confidence"][1]
    want = common.mean_ci(
        [_fake_sampler_seed(s, None)["steps"]["low_confidence"][1]["valid"] for s in (0, 1, 2)]
    )
    assert low["steps"] == 2 and low["valid"] == pytest.approx(want)
    assert result["summary"]["blocks"][0]["valid"]["n"] == 3
    assert result["summary"]["autoregressive_valid"]["mean"] == pytest.approx(0.1 + 0.45)
    assert "sampler.png" in capsys.readouterr().out
    # A rerun replaces its own result only when asked to, atomically (no temporary left).
    assert (
        main(
            ["experiment", "sampler", "--seeds", "3", *FAKE, "--out", str(tmp_path), "--overwrite"]
        )
        == 0
    )
    assert _ran(tmp_path, "sampler")["provenance"]["seeds"] == [3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sampler.json", "sampler.png"]


def test_scaling_summary_groups_runs_by_size_and_kind():
    runs = [
        {
            "size": size,
            "kind": kind,
            "seed": seed,
            "params": 10,
            "tokens": 5,
            "train_loss": 1.0 + seed,
            "heldout_loss": 2.0 + seed,
            "ranking": 0.5 + 0.1 * seed,
        }
        for seed in (0, 1, 2)
        for size in ("xs", "s")
        for kind in ("diffusion", "ar")
    ]
    rows = scaling.summarize(runs)
    assert [(r["size"], r["kind"], r["seeds"]) for r in rows] == [
        ("xs", "diffusion", [0, 1, 2]),
        ("xs", "ar", [0, 1, 2]),
        ("s", "diffusion", [0, 1, 2]),
        ("s", "ar", [0, 1, 2]),
    ]
    assert rows[3]["ranking"] == pytest.approx(common.mean_ci([0.5, 0.6, 0.7]))


def test_a_failing_plot_keeps_the_json_and_says_where(tmp_path, monkeypatch, capsys):
    def broken(result):
        def draw(fig):
            raise RuntimeError("no fonts")

        return draw

    monkeypatch.setattr(sampler, "run_seed", _fake_sampler_seed)
    monkeypatch.setattr(sampler, "plot", broken)
    assert main(["experiment", "sampler", "--seeds", "0", "1", *FAKE, "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(tmp_path / "sampler.json") in err and "no fonts" in err and "--no-plot" in err
    assert json.loads((tmp_path / "sampler.json").read_text())["per_seed"][1]["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sampler.json"]


def test_a_failed_write_leaves_the_old_result(tmp_path):
    old = tmp_path / "sampler.json"
    old.write_text('{"experiment": "sampler"}\n')
    with pytest.raises(TypeError):  # not JSON-serialisable: fails half way through writing
        common.write_result(tmp_path, "sampler", {"experiment": "sampler", "x": object()}, None)
    assert old.read_text() == '{"experiment": "sampler"}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["sampler.json"]


# --- refused options: exit 2, one line, nothing written, before any model is built ------------
BAD = [  # (experiment argv after the name, words of the one-line error)
    (["--seeds", "0", "0"], "--seeds repeats 0"),
    (["--seeds", "-1"], "--seeds -1 must be an integer in [0, 2**63)"),
    (["--seed", "1", str(2**63)], f"--seeds {2**63} must be an integer"),
    (["--seeds"], "expected at least one argument"),
    (["--length", "12"], "power of two"),
    (["--length", "0"], "--length 0 is too small"),
    (["--max-step", "64"], "below --modulus 64"),
    (["--steps", "0"], "--steps 0 is too small"),
    (["--queries", "-3"], "--queries -3 is too small"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--out", "{file}"], "is a file, not a directory"),
    (["--out", "{file}/sub"], "cannot be created"),
    (["--out", "{foreign}"], "not a lladax sampler result: refusing"),
    (["--out", "{own}"], "pass --overwrite"),
    pytest.param(
        ["--out", "{locked}/sub"],
        "not writable",
        marks=pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere"),
    ),
]
BAD_SCALING = [
    (["--sizes", "xs", "xs"], "--sizes repeats xs"),
    (["--sizes", "xl"], "invalid choice: 'xl'"),
    (["--mc", "20"], "multiple of 16"),
    (["--pairs", "0"], "--pairs 0 is too small"),
    (["--noise-draws", "0"], "--noise-draws 0 is too small"),
    (["--workdir", "{file}"], "not a new or empty directory"),
    (["--workdir", "{foreign}"], "not a new or empty directory"),
    (["--seeds", "2", "1", "2"], "--seeds repeats 2"),
]
BAD_REVERSAL = [
    (["--pairs", "100", "--entities", "4"], "distinct sides"),
    (["--pairs", "1"], "--pairs 1 is too small"),
    (["--mask-eps", "0"], "--mask-eps 0.0 must be in (0, 1)"),
    (["--lr", "-1"], "--lr -1.0 must be > 0"),
    (["--out", "{foreign}"], "not a lladax reversal result"),
]


@pytest.fixture
def places(tmp_path):
    """A file, a directory with a foreign sampler.json/reversal.json, one with an earlier own
    result, a read-only directory, and an empty output directory; returns their paths."""
    (tmp_path / "file").write_text("mine\n")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    for name in ("sampler", "reversal"):
        (foreign / f"{name}.json").write_text('{"my": "notes"}\n')
    own = tmp_path / "own"
    own.mkdir()
    (own / "sampler.json").write_text('{"experiment": "sampler"}\n')
    (own / "sampler.png").write_bytes(b"png")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    out = tmp_path / "out"
    return {
        "file": tmp_path / "file",
        "foreign": foreign,
        "own": own,
        "locked": locked,
        "out": out,
        "root": tmp_path,
    }


def _refused(cli_error, places, name, argv, words):
    argv = [a.format(**places) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(places["out"])]
    line = cli_error(["experiment", name, *argv], code=2, untouched=[places["root"]])
    assert words in line and "Traceback" not in line
    return line


@pytest.mark.parametrize(("argv", "words"), BAD)
def test_bad_sampler_options_are_refused(cli_error, places, argv, words):
    _refused(cli_error, places, "sampler", argv, words)


@pytest.mark.parametrize(("argv", "words"), BAD_SCALING)
def test_bad_scaling_options_are_refused(cli_error, places, argv, words):
    _refused(cli_error, places, "scaling", argv, words)


@pytest.mark.parametrize(("argv", "words"), BAD_REVERSAL)
def test_bad_reversal_options_are_refused(cli_error, places, argv, words):
    _refused(cli_error, places, "reversal", argv, words)


@pytest.mark.parametrize("name", ["reversal", "scaling", "sampler"])
def test_missing_matplotlib_is_refused_before_any_work(cli_error, places, monkeypatch, name):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    line = _refused(cli_error, places, name, [], "matplotlib is not installed")
    assert "`uv sync --extra notebooks`" in line and "--no-plot" in line
    assert not places["out"].exists()


# --- signals: a stopped experiment says so in one line and writes nothing ---------------------
def test_a_stopped_training_run_stops_the_experiment(places, monkeypatch, capsys):
    # loop.run catches SIGTERM and returns early; scoring that model as finished would be wrong.
    monkeypatch.setattr(scaling, "heldout_stream", lambda config: np.zeros(10_000, np.int32))
    monkeypatch.setattr(scaling.loop, "run", lambda config: {"loss": 9.0, "stopped": "SIGTERM"})
    before = tree_snapshot(places["root"])
    assert main(["experiment", "scaling", "--sizes", "xs", "--out", str(places["out"])]) == 143
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "lladax experiment: stopped by SIGTERM during the xs diffusion run of seed "
        "0: nothing was written; rerun the command to start again"
    )
    assert tree_snapshot(places["root"]) == before


def test_ctrl_c_is_one_line_and_writes_nothing(places, monkeypatch, capsys):
    def interrupted(seed, args, log=print):
        raise KeyboardInterrupt

    monkeypatch.setattr(sampler, "run_seed", interrupted)
    assert main(["experiment", "sampler", *FAKE, "--out", str(places["out"])]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "stopped by SIGINT" in err.strip().splitlines()[-1]
    assert not places["out"].exists()
