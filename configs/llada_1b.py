"""llada_1b: a ~1.5B LLaDA-shaped model (LLaDA vocabulary) for single-host accelerators.

Expects the LLaDA tokenizer (`--config.data.tokenizer=/path/to/tokenizer.json`) and bf16 compute.
"""

from lladax.config import run_config


def get_config():
    c = run_config("llada_1b", dtype="bfloat16", param_dtype="float32",
                   remat_policy="dots_no_batch")
    c.data.seq_len = 4096
    c.train.update(steps=100_000, batch_size=256, lr=4e-4, warmup_steps=2000)
    c.eval.update(every=1000, batches=16, batch_size=32)
    c.log.update(every=50, workdir="runs/llada_1b")
    c.checkpoint.update(every=1000, keep=3)
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    return c
