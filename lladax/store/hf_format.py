"""The Hugging Face LLaDA format as lladax reads and writes it: config.json -> ModelConfig, the
name, shape and layout map of every tensor (HF [out, in] PyTorch weights <-> lladax leaves, the
per-layer tensors <-> the stacked [layers, ...] leaves), and the header-only checks of a
directory. Nothing here reads a weight: the streaming load and save are `convert`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from lladax.config import ConfigError, ModelConfig
from lladax.model.transformer import abstract_params
from lladax.store.safetensors_io import (
    INDEX_NAME,
    SINGLE_NAME,
    CheckpointFormatError,
    TensorInfo,
    scan_dir,
)

PREFIX = "model.transformer."


@dataclasses.dataclass(frozen=True)
class HFLeaf:
    """One lladax leaf: its path, HF name (with `{i}` for per-layer tensors) and layout maps."""

    path: tuple[str, ...]
    hf: str
    to_lladax: Callable[[np.ndarray], np.ndarray]  # HF [out, in] -> lladax (views, no copy)
    to_hf: Callable[[np.ndarray], np.ndarray]

    @property
    def stacked(self) -> bool:
        return "{i}" in self.hf

    @property
    def transposed(self) -> bool:
        """PyTorch Linear weights: lladax holds [in, ...] = the HF [out, in] transposed."""
        return not self.hf.endswith(("wte.weight", "norm.weight", "ln_f.weight"))


def hf_leaves(cfg: ModelConfig) -> list[HFLeaf]:
    """Every lladax leaf of a `cfg` model with its HF name and layout maps."""
    d, h, kv, hd = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    same = lambda w: w
    t = lambda w: w.T
    blk = PREFIX + "blocks.{i}."
    return [
        HFLeaf(("wte",), PREFIX + "wte.weight", same, same),
        HFLeaf(("blocks", "attn_norm", "weight"), blk + "attn_norm.weight", same, same),
        HFLeaf(
            ("blocks", "q_proj"),
            blk + "q_proj.weight",
            lambda w: w.T.reshape(d, h, hd),
            lambda p: p.reshape(d, -1).T,
        ),
        HFLeaf(
            ("blocks", "k_proj"),
            blk + "k_proj.weight",
            lambda w: w.T.reshape(d, kv, hd),
            lambda p: p.reshape(d, -1).T,
        ),
        HFLeaf(
            ("blocks", "v_proj"),
            blk + "v_proj.weight",
            lambda w: w.T.reshape(d, kv, hd),
            lambda p: p.reshape(d, -1).T,
        ),
        HFLeaf(
            ("blocks", "attn_out"),
            blk + "attn_out.weight",
            lambda w: w.T.reshape(h, hd, d),
            lambda p: p.reshape(-1, d).T,
        ),
        HFLeaf(("blocks", "ff_norm", "weight"), blk + "ff_norm.weight", same, same),
        HFLeaf(("blocks", "ff_proj"), blk + "ff_proj.weight", t, t),
        HFLeaf(("blocks", "up_proj"), blk + "up_proj.weight", t, t),
        HFLeaf(("blocks", "ff_out"), blk + "ff_out.weight", t, t),  # MLP down proj, not the head
        HFLeaf(("ln_f", "weight"), PREFIX + "ln_f.weight", same, same),
        HFLeaf(("lm_head",), PREFIX + "ff_out.weight", t, t),
    ]


def get_path(tree: Any, path: tuple[str, ...]) -> Any:
    """The subtree of nested dicts `tree` at `path`."""
    for key in path:
        tree = tree[key]
    return tree


def set_path(tree: dict, path: tuple[str, ...], value: Any) -> None:
    """Put `value` at `path` of nested dicts `tree`, creating the dicts on the way."""
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """HF name -> HF shape of every tensor, in the hub's file order (layer by layer)."""
    abstract = abstract_params(cfg)
    per_leaf = {}
    for leaf in hf_leaves(cfg):
        shape = get_path(abstract, leaf.path).shape
        inner = shape[1:] if leaf.stacked else shape
        per_leaf[leaf.hf] = leaf.to_hf(np.empty(inner, np.uint8)).shape
    top = {k: v for k, v in per_leaf.items() if "{i}" not in k}
    out = {PREFIX + "wte.weight": top.pop(PREFIX + "wte.weight")}
    for i in range(cfg.n_layers):
        out.update({k.format(i=i): v for k, v in per_leaf.items() if "{i}" in k})
    return out | top


# --- config ------------------------------------------------------------------------------------
def _special_tokens(path: Path) -> dict[str, int]:
    """Special ids from special_tokens.json, else from the tokenizer files (e.g. <|eot_id|>)."""
    special_file = path / "special_tokens.json"
    if special_file.exists():
        return json.loads(special_file.read_text())
    tok_file = path / "tokenizer.json"
    if tok_file.exists():
        added = json.loads(tok_file.read_text()).get("added_tokens", [])
        by_name = {t["content"]: t["id"] for t in added}
        if "<|eot_id|>" in by_name:
            return {"eot_token_id": by_name["<|eot_id|>"]}
    return {}


def load_config(path: str | os.PathLike, **overrides: Any) -> ModelConfig:
    """The ModelConfig of a HF LLaDA directory; rejects other architectures by name."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.exists():
        raise CheckpointFormatError(
            f"no config.json in {path}: pass a Hugging Face LLaDA checkpoint directory"
        )
    try:
        hf = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointFormatError(
            f"{config_file} is not valid JSON ({e}): fix or re-download it"
        ) from None
    model_type = hf.get("model_type")
    if (model_type not in (None, "llada")) or ("d_model" not in hf and "hidden_size" in hf):
        raise CheckpointFormatError(
            f"{config_file} is a {model_type!r} config (architectures "
            f"{hf.get('architectures')}), not a LLaDA config: lladax converts LLaDA checkpoints "
            "(model_type 'llada', e.g. GSAI-ML/LLaDA-8B-Base or -Instruct)"
        )
    try:
        return ModelConfig.from_hf_dict(hf, _special_tokens(path), **overrides)
    except ConfigError as e:
        raise ConfigError(f"{config_file}: {e}") from None


def check_tensors(cfg: ModelConfig, infos: dict[str, TensorInfo], path: Path) -> None:
    """One error listing every missing, unexpected, mis-shaped or non-float tensor."""
    expected = hf_shapes(cfg)
    where = path / (INDEX_NAME if (path / INDEX_NAME).exists() else SINGLE_NAME)

    def listing(names: list[str]) -> str:
        return ", ".join(names[:6]) + (f" ... and {len(names) - 6} more" if len(names) > 6 else "")

    problems = []
    missing = [n for n in expected if n not in infos]
    unexpected = sorted(n for n in infos if n not in expected)
    if missing:
        problems.append(f"{len(missing)} missing: {listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {listing(unexpected)}")
    shapes = [
        f"{n} has shape {infos[n].shape} in {infos[n].file.name} but config.json implies {s}"
        for n, s in expected.items()
        if n in infos and infos[n].shape != s
    ]
    problems += shapes[:6]
    odd = [
        f"{n} is {i.dtype}, not a float"
        for n, i in infos.items()
        if n in expected and not jnp.issubdtype(i.dtype, jnp.floating)
    ]
    problems += odd[:3]
    if problems:
        raise CheckpointFormatError(
            f"{where} does not match {path / 'config.json'} (n_layers={cfg.n_layers}, d_model="
            f"{cfg.d_model}, vocab={cfg.vocab_size}): {'; '.join(problems)}. Use the config.json "
            "that came with these weights, and a LLaDA checkpoint (tensors named "
            f"{PREFIX}blocks.<i>.q_proj.weight, ...), not a converted or other-architecture one"
        )


def check_hf(path: str | os.PathLike) -> ModelConfig:
    """Everything `load_hf` checks before reading a weight (config.json, the safetensors headers,
    every name and shape): one error, nothing read beyond headers. Returns the ModelConfig."""
    path = Path(path)
    cfg = load_config(path)
    check_tensors(cfg, scan_dir(path), path)
    return cfg


def stored_dtype(path: str | os.PathLike) -> np.dtype:
    """The dtype the checkpoint's tensors are stored in (float32 if they are mixed)."""
    dtypes = {i.dtype for i in scan_dir(Path(path)).values()}
    return dtypes.pop() if len(dtypes) == 1 else np.dtype(np.float32)
