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


# --- streaming conversion, meshes, the CLI, and the errors a real download can hit --------------
from lladax import checkpoint, model, sharding  # noqa: E402
from lladax.cli import main as cli_main  # noqa: E402
from lladax.safetensors_io import parse_size  # noqa: E402


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2 * 2**30
    assert parse_size("500MB") == 5 * 10**8 and parse_size(1234) == 1234
    with pytest.raises(ValueError, match="5GB"):
        parse_size("5 parsecs")


def test_sharded_max_shard_size_string(tiny_llada, tmp_path):
    cfg, params = tiny_llada
    convert.save_hf(tmp_path, cfg, params, max_shard_size="100KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1 and all((tmp_path / f).stat().st_size <= 100_000 for f in files)
    assert not list(tmp_path.glob("*.tmp"))
    hf = json.loads((tmp_path / "config.json").read_text())
    assert hf["architectures"] == ["LLaDAModelLM"] and "AutoModel" in hf["auto_map"]
    cfg2, params2 = convert.load_hf(tmp_path)
    assert cfg2 == cfg and _same(params, params2)
    # dtype=None keeps the stored dtype; a bf16 export loads back as bf16.
    convert.save_hf(tmp_path / "bf16", cfg, params, dtype=jnp.bfloat16)
    _, p16 = convert.load_hf(tmp_path / "bf16", None)
    assert jax.tree.leaves(p16)[0].dtype == jnp.bfloat16


@pytest.mark.parametrize("shape", [(2, 4, 1), (1, 2, 4)])
def test_load_onto_mesh_gives_golden_logits(tiny_llada_dir, golden, shape):
    mesh = sharding.make_mesh(*shape)
    cfg, params = convert.load_hf(tiny_llada_dir, jnp.float32, mesh)
    want = sharding.tree_shardings(mesh, model.param_logical_axes(cfg))
    for p, s in zip(jax.tree.leaves(params), jax.tree.leaves(want), strict=True):
        assert p.sharding.is_equivalent_to(s, p.ndim)
    case = golden("forward_plain")
    logits = model.forward(params, cfg, case["input_ids"])
    np.testing.assert_allclose(np.asarray(logits), case["logits"], atol=5e-5, rtol=0)


def test_cli_hf_to_orbax_to_hf_is_bit_identical(tiny_llada_dir, tmp_path):
    orb, hf = tmp_path / "orbax", tmp_path / "hf"
    assert cli_main(["convert", "hf-to-orbax", str(tiny_llada_dir), str(orb),
                     "--mesh", "2,4,1"]) == 0
    cfg, params = checkpoint.load_params(orb)
    ref_cfg, ref = convert.load_hf(tiny_llada_dir)
    assert cfg == ref_cfg and _same(params, ref)
    assert cli_main(["convert", "orbax-to-hf", str(orb), str(hf),
                     "--max-shard-size", "60KB"]) == 0
    assert (hf / "model.safetensors.index.json").exists()
    names, read = convert._tensor_reader(tiny_llada_dir / "model.safetensors")
    back = convert.scan_dir(hf)
    assert sorted(back) == sorted(names)
    for name in names:
        got = convert.read_tensor(back[name])
        assert got.dtype == read(name).dtype and np.array_equal(got, read(name))
    # Converting into a directory that already holds checkpoints is refused.
    assert cli_main(["convert", "hf-to-orbax", str(tiny_llada_dir), str(orb)]) == 2


@pytest.fixture
def sharded_copy(tiny_llada, tmp_path):
    cfg, params = tiny_llada
    convert.save_hf(tmp_path / "sharded", cfg, params, max_shard_size="60KB")
    return tmp_path / "sharded"


def _shards(path):
    index = json.loads((path / "model.safetensors.index.json").read_text())
    return sorted(set(index["weight_map"].values()))


def test_missing_shard_names_file_and_fix(sharded_copy):
    gone = _shards(sharded_copy)[1]
    (sharded_copy / gone).unlink()
    with pytest.raises(convert.CheckpointFormatError) as e:
        convert.load_hf(sharded_copy)
    msg = str(e.value)
    assert gone in msg and "missing" in msg
    assert "model.safetensors.index.json" in msg and "re-download" in msg


def test_truncated_shard_names_file_and_fix(sharded_copy):
    shard = sharded_copy / _shards(sharded_copy)[-1]
    shard.write_bytes(shard.read_bytes()[:-1000])
    with pytest.raises(convert.CheckpointFormatError, match="truncated") as e:
        convert.load_hf(sharded_copy)
    assert str(shard) in str(e.value) and "re-download" in str(e.value)


def test_name_and_shape_mismatch_lists_names(ckpt_copy):
    file = ckpt_copy / "model.safetensors"
    names, read = convert._tensor_reader(file)
    tensors = {n: np.array(read(n)) for n in names}
    # Llama-style names for one layer, and a wrong shape for another tensor.
    tensors["model.layers.1.self_attn.q_proj.weight"] = tensors.pop(
        "model.transformer.blocks.1.q_proj.weight")
    tensors["model.transformer.blocks.0.ff_out.weight"] = np.zeros((64, 100), np.float32)
    convert.write_safetensors(file, tensors)
    with pytest.raises(convert.CheckpointFormatError) as e:
        convert.load_hf(ckpt_copy)
    msg = str(e.value)
    assert "1 missing: model.transformer.blocks.1.q_proj.weight" in msg
    assert "1 unexpected: model.layers.1.self_attn.q_proj.weight" in msg
    assert "blocks.0.ff_out.weight has shape (64, 100)" in msg and "(64, 128)" in msg
    assert str(file) in msg and "config.json that came with these weights" in msg


def test_llama_config_is_rejected(ckpt_copy):
    (ckpt_copy / "config.json").write_text(json.dumps({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
        "vocab_size": 320}))
    with pytest.raises(convert.CheckpointFormatError) as e:
        convert.load_hf(ckpt_copy)
    msg = str(e.value)
    assert str(ckpt_copy / "config.json") in msg and "'llama'" in msg
    assert "not a LLaDA config" in msg and "GSAI-ML/LLaDA-8B" in msg
    assert cli_main(["convert", "hf-to-orbax", str(ckpt_copy), str(ckpt_copy / "o")]) == 2
