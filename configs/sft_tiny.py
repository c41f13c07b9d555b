"""sft_tiny: supervised fine-tuning of the `tiny` model on the built-in synthetic instruction set.

For CI and smoke tests (seconds on a CPU). SFT normally starts from pretrained params:

    lladax train --config configs/tiny.py --workdir runs/tiny
    lladax train --config configs/sft_tiny.py --config.checkpoint.init_from=runs/tiny

`data.source` takes a chat jsonl file instead (`{"messages": [{"role", "content"}, ...]}` per
line); see docs/sft.md.
"""

from lladax.train.run_config import run_config


def get_config():
    # Activations are tiny: rematerialisation would only add recompute.
    c = run_config("tiny", remat_policy="none")
    c.data.format = "chat"  # lladax.data.sft batches: tokens + prompt_lengths
    c.data.source = "synthetic:all"  # or a chat .jsonl file / directory
    c.data.seq_len = 128  # the longest sample; batches use shorter buckets
    c.train.update(steps=30, batch_size=8, lr=1e-3, warmup_steps=5, decay_fraction=0.2)
    c.eval.update(every=10, batches=2, batch_size=8)
    c.log.update(every=5, workdir="runs/sft_tiny")
    c.checkpoint.init_from = ""  # a pretrained run dir / Orbax params / HF directory
    return c
