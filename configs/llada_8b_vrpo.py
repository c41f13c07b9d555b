"""llada_8b_vrpo: an LLaDA-8B chat model -> preference-optimised with VRPO (LLaDA 1.5's recipe
shape: DPO on ELBO estimates, n = 8 noisy copies per estimate, n_t = 8 noise levels × n_yt = 1
mask, antithetic noise shared by the policy and the frozen reference).

    lladax plan  --config configs/llada_8b_vrpo.py:v5p-128      # memory/throughput first
    launch/tpu_pod.sh run ... --config configs/llada_8b_vrpo.py:v5p-128 \
        --config.checkpoint.init_from=/path/to/LLaDA-8B-Instruct-or-your-SFT-run \
        --config.data.tokenizer=/path/to/tokenizer.json \
        --config.data.source=/path/to/pairs.jsonl

Pairs are `{"prompt" | "messages", "chosen", "rejected"}` jsonl (docs/vrpo.md). Every pair runs
2 answers × 8 copies = 16 rows through the policy (forward + backward) and the reference
(forward): ~21× an SFT row's FLOPs, and 16 rows of activations per pair. So each layout keeps ONE
pair per device per micro-batch, answers up to 2048 tokens (prompt included) and full remat;
on v5e's 16 GiB it splits heads, MLP and vocabulary over a tensor axis (the f32 logits of 16
rows dominate). No v4-128 layout: XLA needs 36 GiB/chip for tensor = 4 there (AOT matrix,
docs/scaling.md), past v4's 32; use v5p or shorten data.seq_len. The reference is kept in
bfloat16 (half its memory; its forward computes in bf16 anyway).

Optimiser settings are DPO's usual ones for a model of this size (AdamW, LR 5e-7, β 0.1,
batch 64 pairs, one epoch): tune them for your data; LLaDA 1.5 reports its own in its paper.
"""

from pathlib import Path

from lladax.train.config_files import load_config_file

PAIRS_PER_BATCH = 64
# hardware -> (mesh data/fsdp/tensor, grad_accum); `lladax plan` checks each fits (one pair per
# device per micro-batch: grad_accum × data × fsdp = 64).
HARDWARE = {
    "v5p-128": (dict(data=1, fsdp=-1, tensor=1), 1),  # 64 chips, 95 GiB
    "v5p-64": (dict(data=1, fsdp=-1, tensor=1), 2),  # 32 chips, 95 GiB
    "v5e-256": (dict(data=1, fsdp=32, tensor=8), 2),  # 256 chips, 16 GiB
    "8xh100": (dict(data=1, fsdp=8, tensor=1), 8),  # 8 GPUs, 80 GiB
}


def get_config(hardware: str = "v5p-128"):
    if hardware not in HARDWARE:
        raise ValueError(
            f"unknown hardware {hardware!r} for llada_8b_vrpo: use one of "
            f"{sorted(HARDWARE)} (configs/llada_8b_vrpo.py:<hardware>)"
        )
    mesh, grad_accum = HARDWARE[hardware]
    c = load_config_file(f"{Path(__file__).with_name('llada_8b.py')}:v5p-128")
    c.model.remat_policy = "full"
    c.data.format = "preference"
    c.data.source = ""  # a pair .jsonl file or directory (required)
    c.data.seq_len = 2048
    c.preference.update(beta=0.1, n_t=8, n_yt=1, antithetic=True, reference_dtype="bfloat16")
    c.train.update(
        steps=5_000,  # one epoch of 320k pairs at 64 per step: set it to your pairs / 64
        batch_size=PAIRS_PER_BATCH,
        grad_accum=grad_accum,
        lr=5e-7,
        warmup_steps=50,
        decay_fraction=0.1,
        final_lr_ratio=0.1,
        weight_decay=0.0,
        truncate_prob=0.0,
    )
    c.eval.update(every=250, batches=4, batch_size=PAIRS_PER_BATCH // grad_accum)
    c.log.update(every=10, workdir="runs/llada_8b_vrpo")
    c.checkpoint.update(every=250, keep=3)
    c.checkpoint.init_from = ""  # the SFT model: starting params and frozen reference (required)
    c.mesh.update(**mesh)
    return c
