"""llada_8b: exact LLaDA-8B shapes and the paper's pretraining recipe (AdamW wd 0.1, WSD, 4e-4).

Batch 1280 × 4096 tokens as in the paper, on the hardware named by the config argument:

    lladax plan  --config configs/llada_8b.py:v5p-128        # memory/throughput before you pay
    launch/tpu_pod.sh run ... --config configs/llada_8b.py:v5p-128

Each layout keeps one sequence per device per micro-batch (gradient accumulation makes up the
global batch): at 4096 tokens the float32 logits alone are 4 GiB per sequence. Use the LLaDA
tokenizer (`--config.data.tokenizer=/path/to/tokenizer.json`).
"""

from lladax.train.run_config import run_config

# hardware -> (mesh data/fsdp/tensor, grad_accum, remat policy); `lladax plan` checks each fits.
HARDWARE = {
    "v4-128": (dict(data=1, fsdp=-1, tensor=1), 20, "full"),  # 64 chips, 32 GiB
    "v5p-64": (dict(data=1, fsdp=-1, tensor=1), 40, "dots_no_batch"),  # 32 chips, 95 GiB
    "v5p-128": (dict(data=1, fsdp=-1, tensor=1), 20, "dots_no_batch"),  # 64 chips, 95 GiB
    "v5e-256": (dict(data=1, fsdp=-1, tensor=1), 5, "full"),  # 256 chips, 16 GiB
    "8xh100": (dict(data=1, fsdp=-1, tensor=1), 160, "full"),  # 8 GPUs, 80 GiB
}


def get_config(hardware: str = "v5p-128"):
    if hardware not in HARDWARE:
        raise ValueError(
            f"unknown hardware {hardware!r} for llada_8b: use one of "
            f"{sorted(HARDWARE)} (configs/llada_8b.py:<hardware>)"
        )
    mesh, grad_accum, remat = HARDWARE[hardware]
    c = run_config("llada_8b", dtype="bfloat16", param_dtype="float32", remat_policy=remat)
    c.data.seq_len = 4096
    c.train.update(
        steps=440_000,
        batch_size=1280,
        grad_accum=grad_accum,
        lr=4e-4,
        warmup_steps=2000,
        decay_fraction=0.1,
        final_lr_ratio=0.025,
    )
    c.eval.update(every=1000, batches=16, batch_size=64)
    c.log.update(every=50, workdir="runs/llada_8b")
    c.checkpoint.update(every=1000, keep=3)
    c.mesh.update(**mesh)
    return c
