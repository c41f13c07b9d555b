"""The HF LLaDA format (`hf_format`) as loading sees it: config.json and special ids read, and one
clear error for a missing, foreign or mismatched config and for wrong tensor names or shapes."""

import json

import numpy as np
import pytest
import store_fixtures

from lladax.cli import main as cli_main
from lladax.config import ConfigError
from lladax.store import convert, safetensors_io

ckpt_copy = store_fixtures.ckpt_copy  # the shared fixture


def test_load_reads_config_and_special_ids(tiny_llada):
    cfg, _ = tiny_llada
    assert (cfg.vocab_size, cfg.d_model, cfg.n_layers, cfg.n_heads) == (320, 64, 2, 4)
    assert (cfg.mask_token_id, cfg.eos_token_id, cfg.pad_token_id, cfg.eot_token_id) == (
        310,
        2,
        2,
        3,
    )


def test_missing_config(tmp_path):
    with pytest.raises(safetensors_io.CheckpointFormatError, match="no config.json"):
        convert.load_hf(tmp_path)


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
    with pytest.raises(
        safetensors_io.CheckpointFormatError, match=r"wte.weight has shape \(320, 64\)"
    ):
        convert.load_hf(ckpt_copy)


def test_name_and_shape_mismatch_lists_names(ckpt_copy):
    file = ckpt_copy / "model.safetensors"
    names, read = convert._tensor_reader(file)
    tensors = {n: np.array(read(n)) for n in names}
    # Llama-style names for one layer, and a wrong shape for another tensor.
    tensors["model.layers.1.self_attn.q_proj.weight"] = tensors.pop(
        "model.transformer.blocks.1.q_proj.weight"
    )
    tensors["model.transformer.blocks.0.ff_out.weight"] = np.zeros((64, 100), np.float32)
    safetensors_io.write_safetensors(file, tensors)
    with pytest.raises(safetensors_io.CheckpointFormatError) as e:
        convert.load_hf(ckpt_copy)
    msg = str(e.value)
    assert "1 missing: model.transformer.blocks.1.q_proj.weight" in msg
    assert "1 unexpected: model.layers.1.self_attn.q_proj.weight" in msg
    assert "blocks.0.ff_out.weight has shape (64, 100)" in msg and "(64, 128)" in msg
    assert str(file) in msg and "config.json that came with these weights" in msg


def test_llama_config_is_rejected(ckpt_copy):
    (ckpt_copy / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "architectures": ["LlamaForCausalLM"],
                "hidden_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "intermediate_size": 128,
                "vocab_size": 320,
            }
        )
    )
    with pytest.raises(safetensors_io.CheckpointFormatError) as e:
        convert.load_hf(ckpt_copy)
    msg = str(e.value)
    assert str(ckpt_copy / "config.json") in msg and "'llama'" in msg
    assert "not a LLaDA config" in msg and "GSAI-ML/LLaDA-8B" in msg
    assert cli_main(["convert", "hf-to-orbax", str(ckpt_copy), str(ckpt_copy.parent / "o")]) == 2
    assert not (ckpt_copy.parent / "o").exists()
