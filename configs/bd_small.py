"""bd_small: configs/small.py's model and data as block diffusion, blocks of 16 at seq_len 64.

    lladax train --config configs/bd_small.py                # a few minutes on a 2-core CPU

Each block is denoised given the clean blocks before it (BD3-LM, LLaDA 2.x): every step runs the
noisy and the clean copy side by side (2 × 64 rows), about twice configs/small.py's step.

`configs/bd_small.py:adapt` is LLaDA 2.0's recipe instead: start from an autoregressive run of
the same shapes and grow the block size from 1 (AR-like) through one whole-sequence block (64,
LLaDA's loss) down to 16:

    lladax train --config configs/small.py --workdir runs/small_ar \
        --config.model.kind=autoregressive
    lladax train --config configs/bd_small.py:adapt          # init_from runs/small_ar
"""

from pathlib import Path

from lladax.train.config_files import load_config_file

VARIANTS = ("", "adapt")


def get_config(variant: str = ""):
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} for bd_small: use configs/bd_small.py:adapt")
    c = load_config_file(str(Path(__file__).with_name("small.py")))
    c.model.update(kind="block_diffusion", block_size=16)
    c.log.workdir = "runs/bd_small"
    if variant == "adapt":
        c.train.block_curriculum = "1:50,4:50,64:100,16"
        c.checkpoint.init_from = "runs/small_ar"
        c.log.workdir = "runs/bd_small_adapt"
    return c
