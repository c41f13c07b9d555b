"""ModelConfig validation, presets, the HF config.json mapping, and the run-config check."""

import json
from pathlib import Path

import pytest

from lladax.config import ConfigError, ModelConfig, preset
from lladax.train.run_config import check_run_config, run_config


def test_hf_dict_round_trip(tiny_llada_dir):
    hf = json.loads((tiny_llada_dir / "config.json").read_text())
    special = json.loads((tiny_llada_dir / "special_tokens.json").read_text())
    cfg = ModelConfig.from_hf_dict(hf, special)
    assert ModelConfig.from_hf_dict(cfg.to_hf_dict(), cfg.special_tokens()) == cfg
    for key in (
        "d_model",
        "n_layers",
        "n_heads",
        "mlp_hidden_size",
        "rope_theta",
        "mask_token_id",
        "block_type",
        "embedding_size",
    ):
        assert cfg.to_hf_dict()[key] == hf[key]


def test_llada_8b_preset_shapes():
    cfg = preset("llada_8b")
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.mlp_hidden_size, cfg.vocab_size) == (
        32,
        4096,
        32,
        12288,
        126464,
    )
    assert (cfg.mask_token_id, cfg.eos_token_id, cfg.pad_token_id) == (126336, 126081, 126081)


def test_flops_formula_counts_full_attention():
    cfg = preset("small")
    seq = 128
    weights = cfg.param_count(embeddings=False) + cfg.vocab_size * cfg.d_model
    assert cfg.flops_per_token(seq) == 6 * weights + 12 * cfg.n_layers * seq * cfg.d_model


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(d_model=65), "not divisible by n_heads"),
        (dict(mask_token_id=9999), "outside the vocabulary"),
        (dict(mask_token_id=2), "must differ from pad_token_id"),
        (dict(remat_policy="some"), "remat_policy='some' is unknown"),
        (dict(n_layers=0), "n_layers must be a positive int"),
    ],
)
def test_invalid_configs(changes, message):
    with pytest.raises(ConfigError, match=message):
        preset("tiny", **changes)


def test_unknown_preset_and_field():
    with pytest.raises(ConfigError, match="unknown model preset"):
        preset("huge")
    with pytest.raises(ConfigError, match=r"unknown ModelConfig field\(s\) \['d_modle'\]"):
        preset("tiny", d_modle=3)


def test_forward_flops_consistent_with_training_flops():
    cfg = preset("small")
    n = 192
    # training = forward + backward = 3 × forward, per token (flops_per_token also counts the
    # few norm weights as 6·N, hence the relative tolerance)
    assert cfg.flops_per_token(n) == pytest.approx(3 * cfg.forward_flops(n) / n, rel=1e-3)
    window = cfg.forward_flops(n, 32)
    assert window < cfg.forward_flops(n) and cfg.forward_flops(n, n) == cfg.forward_flops(n)


# --- the run config (run_config.check_run_config) ------------------------------------------
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.py")), ids=lambda p: p.name)
def test_shipped_configs_pass_the_run_config_check(path):
    from lladax.train.config_files import load_config_file

    config = load_config_file(str(path))
    if not config.data.source:  # llada_8b_sft: the user's chat data is required
        with pytest.raises(ConfigError, match="data.source='' must be a non-empty string"):
            check_run_config(config)
        config.data.source = "chat.jsonl"
    check_run_config(config)


@pytest.mark.parametrize(
    "section, key, value, words",
    [
        ("train", "steps", 1.5, "train.steps=1.5 must be an int"),
        ("train", "lr", "fast", "train.lr='fast' must be a number"),
        ("train", "stratified_t", 1, "train.stratified_t=1 must be true or false"),
        ("data", "pack", "yes", "data.pack='yes' must be true or false"),
        ("eval", "batches", True, "eval.batches=True must be an int"),
        ("train", "clip_norm", 0.0, "train.clip_norm=0.0 must be a number > 0"),
        ("data", "seq_len", 129, "data.seq_len=129 is longer than model.max_seq_len=128"),
        ("log", "workdir", " ", "log.workdir=' ' must be a non-empty string"),
    ],
)
def test_run_config_types_and_ranges(section, key, value, words):
    """Values a config file that builds its own ConfigDict can hold (overrides and run_config's
    typed fields are type-checked earlier): each is one line naming section.key=value and the
    fix."""
    import ml_collections

    values = run_config("tiny").to_dict()
    values[section][key] = value
    config = ml_collections.ConfigDict(values)
    with pytest.raises(ConfigError) as e:
        check_run_config(config)
    assert (
        words in str(e.value) and f"--config.{section}" in str(e.value) and "\n" not in str(e.value)
    )


def test_unknown_run_config_section_and_key():
    config = run_config("tiny")
    config.train.stepz = 3
    with pytest.raises(ConfigError, match=r"unknown config key train.stepz: the keys of train"):
        check_run_config(config)
    config = run_config("tiny")
    config.optim = {"lr": 1.0}
    with pytest.raises(ConfigError, match="unknown config section 'optim'"):
        check_run_config(config)
