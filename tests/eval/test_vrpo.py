"""`lladax experiment vrpo` and its on-policy pair builder (`lladax.eval.preference_pairs`): the
pairs (chosen = the answer, rejected = the model's own wrong reply, else a near miss) read back as
preference data; greedy replies of every kind; the estimator-variance probe (antithetic noise
cancels exactly when policy = reference); the arms' run configs; seeds aggregate to mean ± CI;
every bad option is refused in one line before any work."""

import json

import jax
import numpy as np
import pytest

from lladax.cli import main
from lladax.config import preset
from lladax.data import instructions
from lladax.data.preference import load_pairs, near_miss
from lladax.diffusion.sampler_config import SamplerConfig
from lladax.eval import preference_pairs
from lladax.eval.experiments import EXPERIMENTS, vrpo, vrpo_runs
from lladax.model.transformer import init_params
from lladax.store import params_checkpoint


def test_pairs_reject_the_models_own_errors_else_a_near_miss(tmp_path):
    items = instructions.examples(["copy", "reverse"], "train", per_task=3)
    replies = [
        items[0].answer,  # right: a near miss
        "file file file",  # wrong: the model's own error
        "",  # empty: a near miss (a pair cannot hold an empty answer)
        f"  {items[3].answer} ",  # right up to whitespace
        "value",
        "data list",
    ]
    rows, counts = preference_pairs.on_policy_pairs(items, replies, seed=5)
    assert [r["prompt"] for r in rows] == [ex.prompt for ex in items]
    assert [r["chosen"] for r in rows] == [ex.answer for ex in items]
    for i in (0, 2, 3):
        assert rows[i]["rejected"] == near_miss(items[i].answer, np.random.default_rng([5, i]))
    assert [rows[i]["rejected"] for i in (1, 4, 5)] == ["file file file", "value", "data list"]
    assert (counts.pairs, counts.own_errors, counts.near_misses, counts.empty_replies) == (
        6,
        3,
        3,
        1,
    )
    assert counts.per_task == {
        "copy": {"pairs": 3, "own_errors": 1},
        "reverse": {"pairs": 3, "own_errors": 2},
    }
    # Deterministic in the seed, and readable as preference data.
    assert preference_pairs.on_policy_pairs(items, replies, seed=5)[0] == rows
    path = preference_pairs.write_pairs(tmp_path / "p.jsonl", rows)
    pairs = load_pairs(path, "all")
    assert [(p.messages[0]["content"], p.chosen, p.rejected) for p in pairs] == [
        (r["prompt"], r["chosen"], r["rejected"]) for r in rows
    ]
    with pytest.raises(ValueError, match="6 examples but 5 replies"):
        preference_pairs.on_policy_pairs(items, replies[:5], seed=5)


@pytest.mark.parametrize("kind", ["diffusion", "autoregressive"])
def test_build_pairs_from_a_models_greedy_replies(tok, tmp_path, kind):
    """A random tiny model of either kind answers wrongly: every rejected is its own reply
    (or a near miss where it replied nothing); the file is one pair per prompt."""
    cfg = preset("tiny", kind=kind)
    params = init_params(cfg, jax.random.key(0))
    sampler = SamplerConfig(gen_length=4, steps=4)
    items = instructions.examples(["copy"], "train", seed=1, per_task=5)
    replies = preference_pairs.greedy_replies(params, cfg, tok, items, sampler, batch_size=4)
    assert len(replies) == 5 and all(isinstance(r, str) for r in replies)
    path = tmp_path / "pairs.jsonl"
    counts = preference_pairs.build_pairs(
        params, cfg, tok, path, tasks=["copy"], per_task=5, seed=1, sampler=sampler, batch_size=4
    )
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert counts.pairs == len(rows) == 5
    assert counts.own_errors + counts.near_misses == 5
    own = [r for r, reply in zip(rows, replies, strict=True) if r["rejected"] == reply]
    assert len(own) == counts.own_errors == 5 - sum(not r.strip() for r in replies)


def _batch(tok, tmp_path):
    items = instructions.examples(["copy"], "eval", per_task=3)
    rows, _ = preference_pairs.on_policy_pairs(items, ["x"] * 3, seed=0)
    return vrpo.heldout_pair_batch(tok, rows, tmp_path / "heldout.jsonl")


def test_antithetic_score_is_exactly_zero_for_the_reference_itself(tok, tmp_path):
    cfg = preset("tiny")
    params = init_params(cfg, jax.random.key(0))
    batch = _batch(tok, tmp_path)
    assert batch["chosen"].shape[0] == 3 and batch["chosen"].shape == batch["rejected"].shape
    args = vrpo.parse_args(["--draws", "3", "--no-plot", "--out", str(tmp_path / "out")])
    same = vrpo.score_variance(params, params, cfg, batch, vrpo.ARMS[3], args, seed=0)
    assert same == {"variance": 0.0, "mean_score": 0.0}
    naive = vrpo.score_variance(params, params, cfg, batch, vrpo.ARMS[0], args, seed=0)
    assert naive["variance"] > 0  # independent noise for policy and reference


def test_arm_configs_train_the_sft_model_with_the_arms_estimator(tmp_path):
    sft = tmp_path / "sft"
    cfg = preset("tiny", kind="autoregressive")
    params_checkpoint.save_params(sft, cfg, init_params(cfg, jax.random.key(0)))
    argv = ["--steps", "7", "--batch-size", "4", "--lr", "2e-4", "--beta", "0.3"]
    argv += ["--nll-weight", "0.5"]
    args = vrpo.parse_args([*argv, "--no-plot", "--out", str(tmp_path / "out")])
    runs = vrpo_runs.KindRuns("autoregressive", sft, tmp_path / "ar")
    c = runs.preference_config(vrpo.ARMS[1], 2, tmp_path / "pairs.jsonl", args)
    assert (c.model.kind, c.model.d_model) == ("autoregressive", cfg.d_model)
    assert (c.data.format, c.data.source) == ("preference", str(tmp_path / "pairs.jsonl"))
    assert (c.preference.n_t, c.preference.n_yt, c.preference.antithetic) == (1, 8, False)
    assert (c.preference.beta, c.train.steps, c.train.batch_size, c.train.lr) == (0.3, 7, 4, 2e-4)
    assert (c.preference.nll_weight, c.checkpoint.init_from) == (0.5, str(sft))
    assert c.log.workdir == str(tmp_path / "ar" / "seed2" / "budget")
    assert [(a.name, a.n_t, a.n_yt, a.antithetic) for a in vrpo.ARMS] == [
        ("naive", 1, 1, False),
        ("budget", 1, 8, False),
        ("allocation", 8, 1, False),
        ("vrpo", 8, 1, True),
    ]


def _fake_seed(seed, args, log=print, **_):
    """Known numbers: the SFT model scores 0.2 + seed/100, arm i adds i/10; variance 1/(i+1)."""
    before = 0.2 + seed / 100
    acc = {"copy": before, "reverse": before, "mean": before}

    def kind(arms):
        return {
            "before": acc,
            "pairs": {},
            "arms": {
                a.name: {
                    "after": {k: v + i / 10 for k, v in acc.items()},
                    "reward_accuracy": 0.5,
                }
                for i, a in enumerate(arms)
            },
        }

    variance = {
        a.name: {"variance": 1 / (i + 1), "mean_score": 0.1} for i, a in enumerate(vrpo.ARMS)
    }
    return {
        "seed": seed,
        "diffusion": kind(vrpo.ARMS),
        "autoregressive": kind((vrpo.AR_ARM,)),
        "variance": variance,
    }


def test_seeds_aggregate_to_mean_ci(tmp_path, monkeypatch):
    monkeypatch.setattr(vrpo, "run_seed", _fake_seed)
    monkeypatch.setattr(vrpo_runs, "sft_runs", lambda args, workdir, log: {})
    out = tmp_path / "out"
    argv = ["experiment", "vrpo", "--seeds", "0", "1", "2", "--out", str(out), "--no-plot"]
    assert main(argv) == 0
    result = json.loads((out / "vrpo.json").read_text())
    rows = [(r["kind"], r["arm"]) for r in result["summary"]["accuracy"]]
    assert rows == [
        ("diffusion", "sft"),
        ("diffusion", "naive"),
        ("diffusion", "budget"),
        ("diffusion", "allocation"),
        ("diffusion", "vrpo"),
        ("autoregressive", "sft"),
        ("autoregressive", "ar_dpo"),
    ]
    vrpo_row = result["summary"]["accuracy"][4]
    assert vrpo_row["exact_match"]["mean"] == pytest.approx(0.51)  # 0.21 + 0.3
    assert vrpo_row["change"]["mean"] == pytest.approx(0.3)
    assert vrpo_row["change"]["ci95"] == pytest.approx(0.0, abs=1e-12)  # paired by seed
    variance = {r["arm"]: r for r in result["summary"]["variance"]}
    assert variance["vrpo"]["ratio_to_naive"]["mean"] == pytest.approx(0.25)
    assert result["settings"]["seeds"] == [0, 1, 2]
    assert sorted(p.name for p in out.iterdir()) == ["vrpo.json"]


def test_vrpo_is_registered():
    assert "vrpo" in EXPERIMENTS


BAD = [
    (["--steps", "0"], "--steps 0 is too small"),
    (["--lr", "0"], "--lr 0.0 must be positive"),
    (["--beta", "-1"], "--beta -1.0 must be positive"),
    (["--draws", "1"], "--draws 1 is too small"),
    (["--nll-weight", "-1"], "--nll-weight -1.0 is too small"),
    (["--pairs-per-task", "3"], "fewer than two batches"),
    (["--variance-pairs", "300"], "exceeds the held-out prompts"),
    (["--sft-run", "{missing}"], "is not a `lladax train` run directory"),
    (["--sft-run", "{ar}"], "model of kind 'autoregressive': pass a diffusion or block_diffusion"),
    (["--ar-sft-run", "{file}"], "is not a `lladax train` run directory"),
    (["--workdir", "{file}"], "is a file: pass a directory"),
    (["--seeds", "1", "1"], "--seeds repeats 1"),
]


@pytest.mark.parametrize(("argv", "words"), BAD)
def test_bad_options_are_refused_before_any_work(cli_error, tmp_path, argv, words):
    (tmp_path / "file").write_text("mine\n")
    if "{ar}" in argv:
        cfg = preset("tiny", kind="autoregressive")
        params_checkpoint.save_params(tmp_path / "ar", cfg, init_params(cfg, jax.random.key(0)))
    names = {"file": tmp_path / "file", "missing": tmp_path / "nope", "ar": tmp_path / "ar"}
    argv = [a.format(**names) for a in argv]
    line = cli_error(["experiment", "vrpo", *argv, "--out", str(tmp_path / "out")], code=2)
    assert words in line
    assert not (tmp_path / "out").exists()
