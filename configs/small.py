"""small: ~4.5M params (4 layers, d=256, vocab 2048): learns visibly on a 2-core CPU in minutes."""

from lladax.train.run_config import run_config


def get_config():
    # Activations are small: rematerialisation would only add recompute.
    c = run_config("small", remat_policy="none")
    # Many short rows: the noise level t is drawn per row, so more rows = less gradient noise.
    c.data.seq_len = 64
    c.train.update(steps=300, batch_size=32, lr=1e-3, warmup_steps=30, decay_fraction=0.3)
    c.eval.update(every=50, batches=8, batch_size=32)
    c.log.update(every=10, workdir="runs/small")
    return c
