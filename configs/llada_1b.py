"""llada_1b: a ~1.5B LLaDA-shaped model (LLaDA vocabulary) for one host or a small slice.

The config argument names the hardware (`configs/llada_1b.py:1xh100`, default `8xh100`); see
`lladax plan --config configs/llada_1b.py:<hardware>`. Expects the LLaDA tokenizer
(`--config.data.tokenizer=/path/to/tokenizer.json`) and bf16 compute.
"""

from lladax.train.run_config import run_config

# hardware -> (mesh data/fsdp/tensor, grad_accum, remat policy)
HARDWARE = {
    "1xh100": (dict(data=1, fsdp=1, tensor=1), 64, "dots_no_batch"),
    "8xh100": (dict(data=1, fsdp=-1, tensor=1), 8, "dots_no_batch"),
    "v5p-16": (dict(data=1, fsdp=-1, tensor=1), 8, "dots_no_batch"),
    "v5e-64": (dict(data=1, fsdp=-1, tensor=1), 4, "full"),
    "v4-32": (dict(data=1, fsdp=-1, tensor=1), 16, "dots_no_batch"),
}


def get_config(hardware: str = "8xh100"):
    if hardware not in HARDWARE:
        raise ValueError(
            f"unknown hardware {hardware!r} for llada_1b: use one of "
            f"{sorted(HARDWARE)} (configs/llada_1b.py:<hardware>)"
        )
    mesh, grad_accum, remat = HARDWARE[hardware]
    c = run_config("llada_1b", dtype="bfloat16", param_dtype="float32", remat_policy=remat)
    c.data.seq_len = 4096
    c.train.update(steps=100_000, batch_size=256, grad_accum=grad_accum, lr=4e-4, warmup_steps=2000)
    c.eval.update(every=1000, batches=16, batch_size=32)
    c.log.update(every=50, workdir="runs/llada_1b")
    c.checkpoint.update(every=1000, keep=3)
    c.mesh.update(**mesh)
    return c
