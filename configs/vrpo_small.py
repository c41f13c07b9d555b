"""vrpo_small: preference optimisation (VRPO, LLaDA 1.5) of the SFT demo model, on a CPU.

    lladax train --config configs/small.py --workdir runs/small
    lladax train --config configs/sft_small.py --workdir runs/sft_small
    lladax train --config configs/vrpo_small.py --workdir runs/vrpo_small

`data.source` is the model-free built-in set here (chosen = the right answer of a synthetic
task, rejected = a near miss of it); a pair jsonl (`{"prompt", "chosen", "rejected"}` per line)
or the on-policy set that `lladax experiment vrpo` builds from the model's own wrong answers
takes its place. See docs/vrpo.md.
"""

from lladax.train.run_config import run_config


def get_config():
    c = run_config("small", remat_policy="none")
    c.data.format = "preference"  # lladax.data.preference: chosen + rejected + prompt_lengths
    c.data.source = "synthetic:copy,reverse"  # or a pair .jsonl file / directory
    c.data.seq_len = 64
    c.data.min_answer_len = 8  # the SFT rows' answer region (configs/sft_small.py)
    # LLaDA 1.5's estimator: n = 8 noisy copies per ELBO, one mask per noise level, the policy
    # and the reference on the same noise. β = 0.1 as DPO's default.
    c.preference.update(beta=0.1, n_t=8, n_yt=1, antithetic=True)
    # A preference step costs 2 answers × 8 copies × (policy fwd+bwd + reference fwd), ~21×
    # an SFT step's rows: few pairs per step, a small LR and a short schedule.
    c.train.update(
        steps=200, batch_size=8, lr=5e-5, warmup_steps=10, decay_fraction=0.3, truncate_prob=0.0
    )
    c.eval.update(every=50, batches=4, batch_size=8)
    c.log.update(every=10, workdir="runs/vrpo_small")
    c.checkpoint.every = 100
    c.checkpoint.init_from = "runs/sft_small"  # the SFT run: starting params and frozen reference
    return c
