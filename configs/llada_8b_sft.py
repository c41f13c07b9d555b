"""llada_8b_sft: LLaDA-8B-Base -> a chat model, the paper's SFT recipe on your chat data.

    lladax train --config configs/llada_8b_sft.py:v5p-128 \
        --config.checkpoint.init_from=/path/to/LLaDA-8B-Base \
        --config.data.tokenizer=/path/to/LLaDA-8B-Base/tokenizer.json \
        --config.data.source=/path/to/chat.jsonl

Recipe (paper, SFT): AdamW wd 0.1, global batch 256, LR 0 -> 2.5e-5 over 50 steps, constant,
then linear to 2.5e-6 over the last 10% of steps; 3 epochs of 4.5M pairs = 52,734 steps of 256
(set `train.steps` to 3 × your sample count / 256). Samples are one per assistant turn, EOS-padded
to one of a few bucket lengths <= 4096 (docs/sft.md). The hardware argument picks the mesh and
remat policy of `configs/llada_8b.py`; gradient accumulation is scaled to the smaller batch.
"""

import importlib.util
from pathlib import Path

SFT_BATCH = 256


def _pretrain_config(hardware: str):
    """configs/llada_8b.py's get_config(hardware), loaded beside this file."""
    path = Path(__file__).with_name("llada_8b.py")
    spec = importlib.util.spec_from_file_location("lladax_config_llada_8b", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(hardware)


def get_config(hardware: str = "v5p-128"):
    c = _pretrain_config(hardware)
    # Same micro-batch per device as pretraining (batch 1280), so the memory plan carries over.
    accum = c.train.grad_accum * SFT_BATCH // c.train.batch_size
    if accum < 1 or c.train.grad_accum * SFT_BATCH % c.train.batch_size:
        raise ValueError(
            f"hardware {hardware!r}: grad_accum {c.train.grad_accum} does not scale "
            f"to batch {SFT_BATCH}; set --config.train.grad_accum yourself"
        )
    c.data.format = "chat"
    c.data.source = ""  # a chat .jsonl file or directory (required)
    c.data.seq_len = 4096
    c.train.update(
        steps=52_734,
        batch_size=SFT_BATCH,
        grad_accum=accum,
        lr=2.5e-5,
        warmup_steps=50,
        decay_fraction=0.1,
        final_lr_ratio=0.1,
        weight_decay=0.1,
    )
    c.eval.update(every=1000, batches=8, batch_size=64)
    c.log.update(every=50, workdir="runs/llada_8b_sft")
    c.checkpoint.update(every=1000, keep=3)
    c.checkpoint.init_from = ""  # LLaDA-8B-Base: a HF directory or an Orbax run (required)
    return c
