"""ModelConfig validation, presets and their special ids, the HF config.json mapping."""

import json

import pytest

from lladax.config import (
    EMBEDDED_SPECIAL_IDS,
    LLADA_SPECIAL_IDS,
    ConfigError,
    ModelConfig,
    preset,
)


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


def test_hf_dict_carries_the_kind_of_other_models_only(tiny_llada_dir):
    """LLaDA's config.json has no lladax keys; a block-diffusion (or autoregressive) model's
    kind and block_size survive the round trip, and a bad recorded kind is one line."""
    hf = json.loads((tiny_llada_dir / "config.json").read_text())
    llada = ModelConfig.from_hf_dict(hf)
    assert not {"lladax_kind", "block_size"} & set(llada.to_hf_dict())
    for kind, block_size in (("block_diffusion", 4), ("autoregressive", None)):
        other = llada.replace(kind=kind, block_size=block_size)
        written = other.to_hf_dict()
        assert (written["lladax_kind"], written["block_size"]) == (kind, block_size)
        assert written == llada.to_hf_dict() | {"lladax_kind": kind, "block_size": block_size}
        assert ModelConfig.from_hf_dict(written) == other
    with pytest.raises(ConfigError, match="block_size=0 must be a positive int"):
        ModelConfig.from_hf_dict(hf | {"lladax_kind": "block_diffusion", "block_size": 0})


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


def test_special_ids_come_from_one_place():
    """LLaDA's ids are ModelConfig's defaults and the llada_* presets'; tiny and small use the
    embedded tokenizer's reserved ids."""
    defaults = ModelConfig(
        vocab_size=126464, d_model=64, n_layers=1, n_heads=4, n_kv_heads=4, mlp_hidden_size=8
    )
    assert defaults.special_tokens() == LLADA_SPECIAL_IDS
    assert preset("llada_1b").special_tokens() == LLADA_SPECIAL_IDS
    assert preset("tiny").special_tokens() == preset("small").special_tokens()
    assert preset("tiny").special_tokens() == EMBEDDED_SPECIAL_IDS


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
