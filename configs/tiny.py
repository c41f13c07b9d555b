"""tiny: a 2-layer, d=64 model for CI and smoke tests (trains in seconds on a CPU)."""

from lladax.train.run_config import run_config


def get_config():
    # Activations are tiny: rematerialisation would only add recompute.
    c = run_config("tiny", remat_policy="none")
    c.data.seq_len = 64
    c.train.update(steps=30, batch_size=8, lr=3e-3, warmup_steps=5)
    c.eval.update(every=10, batches=2, batch_size=8)
    c.log.update(every=5, workdir="runs/tiny")
    return c
