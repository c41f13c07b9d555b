"""HF safetensors <-> lladax params: exact round trips and clear errors on bad checkpoints."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lladax import convert
from lladax.config import ConfigError


def _same(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(la, lb, strict=True))


def test_load_reads_config_and_special_ids(tiny_llada):
    cfg, _ = tiny_llada
    assert (cfg.vocab_size, cfg.d_model, cfg.n_layers, cfg.n_heads) == (320, 64, 2, 4)
    assert (cfg.mask_token_id, cfg.eos_token_id, cfg.pad_token_id, cfg.eot_token_id) == \
        (310, 2, 2, 3)


@pytest.mark.parametrize("max_shard_bytes", [5 * 2**30, 60_000])
def test_round_trip_is_bit_identical(tiny_llada_dir, tmp_path, max_shard_bytes):
    cfg, params = convert.load_hf(tiny_llada_dir)
    convert.save_hf(tmp_path, cfg, params, max_shard_bytes=max_shard_bytes)
    sharded = (tmp_path / "model.safetensors.index.json").exists()
    assert sharded == (max_shard_bytes < 2**20)
    cfg2, params2 = convert.load_hf(tmp_path)
    assert cfg2 == cfg and _same(params, params2)
    # The re-exported tensors equal the original file's, name for name.
    names, read = convert._tensor_reader(tiny_llada_dir / "model.safetensors")
    for name, arr in convert.hf_tensors(cfg, params):
        np.testing.assert_array_equal(arr, read(name))
    assert len(names) == len(list(convert.hf_tensors(cfg, params)))


def test_bf16_round_trip(tiny_llada_dir, tmp_path):
    cfg, params = convert.load_hf(tiny_llada_dir, jnp.bfloat16)
    convert.save_hf(tmp_path, cfg, params)
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    _, params2 = convert.load_hf(tmp_path, jnp.bfloat16)
    assert _same(params, params2)


@pytest.fixture
def ckpt_copy(tiny_llada_dir, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(tiny_llada_dir, dst, ignore=shutil.ignore_patterns("golden"))
    return dst


def test_missing_safetensors(ckpt_copy):
    (ckpt_copy / "model.safetensors").unlink()
    with pytest.raises(convert.CheckpointFormatError, match="no model.safetensors"):
        convert.load_hf(ckpt_copy)


def test_missing_config(tmp_path):
    with pytest.raises(convert.CheckpointFormatError, match="no config.json"):
        convert.load_hf(tmp_path)


@pytest.mark.parametrize("cut", [4, 2000, -100])
def test_corrupt_safetensors(ckpt_copy, cut):
    path = ckpt_copy / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    with pytest.raises(convert.CheckpointFormatError, match="corrupt|truncated"):
        convert.load_hf(ckpt_copy)


def test_unknown_block_type(ckpt_copy):
    cfg = json.loads((ckpt_copy / "config.json").read_text())
    cfg["block_type"] = "sequential"
    (ckpt_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="block_type='sequential'"):
        convert.load_hf(ckpt_copy)


def test_vocab_mismatch(ckpt_copy):
    cfg = json.loads((ckpt_copy / "config.json").read_text())
    cfg["embedding_size"] = cfg["vocab_size"] = 400
    (ckpt_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(convert.CheckpointFormatError, match=r"wte.weight has shape \(320, 64\)"):
        convert.load_hf(ckpt_copy)
