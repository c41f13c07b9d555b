"""sft_small: SFT of the `small` model on the built-in synthetic instruction set (the SFT demo).

    lladax train --config configs/small.py --workdir runs/small
    lladax train --config configs/sft_small.py --config.checkpoint.init_from=runs/small

`benchmarks/sft_demo.py` runs both and scores held-out exact match before and after; see
docs/sft.md. Samples are 22-35 tokens with the embedded tokenizer, so batches use buckets < 64.
"""

from lladax.config import run_config


def get_config():
    # Activations are small: rematerialisation would only add recompute.
    c = run_config("small", remat_policy="none")
    c.data.format = "chat"               # lladax.sft batches: tokens + prompt_lengths
    c.data.source = "synthetic:all"      # copy, reverse, sort, add, lookup
    c.data.seq_len = 64
    # mask_eps: p_mask = (1 - eps)·t + eps. At batch 32, LLaDA's eps = 1e-3 lets the rare rows
    # with p near 1e-3 carry weights 1/p up to 1000x: they dominate (and, clipped, shrink) every
    # gradient, and this model learns nothing in 600 steps. eps = 0.2 bounds the weights at 5x
    # (answers are then never less than 20% masked); copying is learned within ~150 steps.
    c.train.update(steps=600, batch_size=32, lr=1e-3, warmup_steps=30, decay_fraction=0.3,
                   mask_eps=0.2, stratified_t=True)
    c.eval.update(every=100, batches=4, batch_size=32)
    c.log.update(every=20, workdir="runs/sft_small")
    c.checkpoint.init_from = "runs/small"  # the pretrained `small` run (configs/small.py)
    return c
