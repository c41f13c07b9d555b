"""llada_8b: exact LLaDA-8B shapes and the paper's pretraining recipe (AdamW wd 0.1, WSD, 4e-4).

Batch 1280 × 4096 tokens as in the paper; use a pod (`launch/tpu_pod.sh`) and the LLaDA
tokenizer (`--config.data.tokenizer=/path/to/tokenizer.json`).
"""

from lladax.config import run_config


def get_config():
    c = run_config("llada_8b", dtype="bfloat16", param_dtype="float32",
                   remat_policy="dots_no_batch")
    c.data.seq_len = 4096
    c.train.update(steps=440_000, batch_size=1280, lr=4e-4, warmup_steps=2000,
                   decay_fraction=0.1, final_lr_ratio=0.025)
    c.eval.update(every=1000, batches=16, batch_size=64)
    c.log.update(every=50, workdir="runs/llada_8b")
    c.checkpoint.update(every=1000, keep=3)
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    return c
