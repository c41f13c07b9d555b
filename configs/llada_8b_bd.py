"""llada_8b_bd: LLaDA-8B shapes as block diffusion (block 32, seq 4096), LLaDA 2.0's block-size
warmup-stable-decay, on the hardware named by the config argument:

    lladax plan  --config configs/llada_8b_bd.py:v5p-128     # memory/throughput before you pay
    launch/tpu_pod.sh run ... --config configs/llada_8b_bd.py:v5p-128 \
        --config.checkpoint.init_from=/path/to/an/autoregressive/or/LLaDA/run

The recipe is configs/llada_8b.py's (batch 1280 × 4096, AdamW, WSD learning rate, 440k steps);
`checkpoint.init_from` an autoregressive run (LLaDA 2.0 adapts an AR model) or a LLaDA run of
the same shapes, or leave it empty to train from scratch. Block sizes (`train.block_curriculum`):
warmup 1 -> 4 -> 32 (1 is AR-like), stable at 4096 = one block (LLaDA's loss, half the step
cost), decay 512 -> 32 during the learning-rate decay. The train step compiles one branch per
distinct size (five here: 1, 4, 32, 512 and the one-block 4096).

The two-copy forward ([noisy | clean], 8192 rows per sequence) doubles the activations of every
layer, so each layout below keeps one sequence per device per micro-batch with more remat than
configs/llada_8b.py where needed (v5e-256 also splits heads and MLP over tensor=4: XLA's
peak is 8.9 GiB/chip there, 16.6 with tensor=2).
"""

from pathlib import Path

from lladax.train.config_files import load_config_file

# hardware -> (mesh data/fsdp/tensor, grad_accum, remat policy); `lladax plan` checks each fits.
HARDWARE = {
    "v4-128": (dict(data=1, fsdp=-1, tensor=1), 20, "full"),  # 64 chips, 32 GiB
    "v5p-64": (dict(data=1, fsdp=-1, tensor=1), 40, "dots_no_batch"),  # 32 chips, 95 GiB
    "v5p-128": (dict(data=1, fsdp=-1, tensor=1), 20, "dots_no_batch"),  # 64 chips, 95 GiB
    # 256 chips, 16 GiB; tensor=2 needed 16.6 GiB/chip in XLA's AOT compile (docs/scaling.md)
    "v5e-256": (dict(data=1, fsdp=-1, tensor=4), 20, "full"),
    "8xh100": (dict(data=1, fsdp=-1, tensor=1), 160, "save_attn_out"),  # 8 GPUs, 80 GiB
}
BLOCK_CURRICULUM = "1:1000,4:1000,32:1000,4096:397000,512:8000,32"


def get_config(hardware: str = "v5p-128"):
    if hardware not in HARDWARE:
        raise ValueError(
            f"unknown hardware {hardware!r} for llada_8b_bd: use one of "
            f"{sorted(HARDWARE)} (configs/llada_8b_bd.py:<hardware>)"
        )
    mesh, grad_accum, remat = HARDWARE[hardware]
    c = load_config_file(f"{Path(__file__).with_name('llada_8b.py')}:{hardware}")
    c.model.update(kind="block_diffusion", block_size=32, remat_policy=remat)
    c.train.update(grad_accum=grad_accum, block_curriculum=BLOCK_CURRICULUM)
    c.log.workdir = "runs/llada_8b_bd"
    c.mesh.update(**mesh)
    return c
