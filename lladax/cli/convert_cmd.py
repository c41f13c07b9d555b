"""`lladax convert`: Hugging Face LLaDA directory -> re-exported HF directory in another dtype.

Loading validates every tensor against config.json (names, shapes, corruption), so this is also
the way to check a download.
"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="validate and re-export a Hugging Face LLaDA checkpoint")
    p.add_argument("src", help="HF directory (config.json + safetensors)")
    p.add_argument("dst", help="output directory")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--max-shard-gb", type=float, default=5.0)


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    import jax.numpy as jnp

    from lladax import convert

    cfg, params = convert.load_hf(args.src, jnp.dtype(args.dtype))
    convert.save_hf(args.dst, cfg, params, max_shard_bytes=int(args.max_shard_gb * 2**30))
    print(f"wrote {cfg.param_count() / 1e6:.1f}M params ({args.dtype}) to {args.dst}")
    return 0
