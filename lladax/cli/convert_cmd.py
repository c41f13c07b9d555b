"""`lladax convert`: Hugging Face LLaDA checkpoints <-> the Orbax params checkpoint of lladax.

  lladax convert hf-to-orbax SRC DST [--dtype bfloat16] [--mesh data,fsdp,tensor]
  lladax convert orbax-to-hf SRC DST [--max-shard-size 5GB] [--dtype float32] [--mesh ...]
  lladax convert SRC DST [--dtype ...] [--max-shard-size ...]   (HF -> HF re-export)

hf-to-orbax writes DST/checkpoints/0/{params,meta} (what `lladax sample/chat --checkpoint DST`
and `checkpoint.load_params` read) and copies the tokenizer files. Loading validates every tensor
against config.json (names, shapes, truncation), so a conversion is also a download check.
"""

from __future__ import annotations

import argparse
from typing import Any

DIRECTIONS = ("hf-to-orbax", "orbax-to-hf")


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="convert Hugging Face LLaDA <-> Orbax checkpoints",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="[DIRECTION] SRC DST",
                   help=f"DIRECTION: {' or '.join(DIRECTIONS)} (omit for a HF -> HF re-export)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="dtype of the written weights (default: as stored in SRC)")
    p.add_argument("--mesh", default=None, metavar="DATA,FSDP,TENSOR",
                   help="load the params sharded on this device mesh (e.g. 1,8,1)")
    p.add_argument("--max-shard-size", default="5GB",
                   help="HF safetensors shard size, e.g. 5GB, 2GiB, 500MB (HF output only)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _mesh(spec: str | None) -> Any:
    if spec is None:
        return None
    from lladax.sharding import make_mesh

    try:
        data, fsdp, tensor = (int(x) for x in spec.split(","))
    except ValueError:
        raise ValueError(f"--mesh {spec!r}: write three sizes DATA,FSDP,TENSOR, e.g. 1,8,1"
                         ) from None
    return make_mesh(data, fsdp, tensor)


class _Bar:
    """A tqdm byte counter (silent when stderr is not a terminal or --no-progress)."""

    def __init__(self, desc: str, total: int, disable: bool) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                         disable=True if disable else None, leave=False)

    def __call__(self, nbytes: int) -> None:
        self._bar.update(nbytes)

    def close(self) -> None:
        self._bar.close()


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    import time
    from pathlib import Path

    import numpy as np

    from lladax import checkpoint, convert

    if args.paths[0] in DIRECTIONS:
        direction, rest = args.paths[0], args.paths[1:]
    else:
        direction, rest = "hf-to-hf", args.paths
    if len(rest) != 2:
        raise ValueError(f"convert {direction} takes SRC and DST, got {rest}: e.g. `lladax "
                         "convert hf-to-orbax LLaDA-8B-Instruct runs/llada8b`")
    src, dst = Path(rest[0]), Path(rest[1])
    mesh = _mesh(args.mesh)
    start = time.perf_counter()

    if direction in ("hf-to-orbax", "hf-to-hf"):
        convert.load_config(src)  # fails fast (one line) on a non-LLaDA directory
        total = sum(i.nbytes for i in convert.scan_dir(src).values())
        bar = _Bar(f"read {src.name}", total, args.no_progress)
        try:
            cfg, params = convert.load_hf(src, args.dtype, mesh, progress=bar)
        finally:
            bar.close()
    else:
        # Restored as saved; a --dtype cast happens per tensor while writing (no second copy).
        cfg, params = checkpoint.load_params(src, shardings=_shardings(cfg_of(src), mesh),
                                             concurrent_gb=1)
        total = sum(p.nbytes for p in _leaves(params))

    if direction == "hf-to-orbax":
        dst.mkdir(parents=True, exist_ok=True)
        tokenizer = convert.copy_tokenizer_files(src, dst)
        checkpoint.save_params(dst, cfg, params, extra_meta={
            "source": str(src.absolute()), "tokenizer": tokenizer[0] if tokenizer else None})
    else:
        nbytes = sum(int(np.prod(s)) for s in convert.hf_shapes(cfg).values()) * np.dtype(
            args.dtype or cfg.param_dtype).itemsize
        bar = _Bar(f"write {dst.name}", nbytes, args.no_progress)
        try:
            convert.save_hf(dst, cfg, params, args.max_shard_size, dtype=args.dtype, progress=bar)
        finally:
            bar.close()
        convert.copy_tokenizer_files(src, dst)
    seconds = time.perf_counter() - start
    print(f"{direction}: {cfg.param_count() / 1e6:.1f}M params ({cfg.param_dtype}), "
          f"{total / 2**30:.2f} GiB read in {seconds:.1f} s -> {dst}")
    return 0


def cfg_of(run_dir: Any) -> Any:
    """The ModelConfig saved in an Orbax run directory's meta."""
    from lladax import checkpoint
    from lladax.config import ModelConfig

    _, meta = checkpoint.read_meta(run_dir)
    return ModelConfig(**meta["model"])


def _shardings(cfg: Any, mesh: Any) -> Any:
    if mesh is None:
        return None
    from lladax.model import param_logical_axes
    from lladax.sharding import tree_shardings

    return tree_shardings(mesh, param_logical_axes(cfg))


def _leaves(tree: Any) -> list[Any]:
    import jax

    return jax.tree.leaves(tree)
