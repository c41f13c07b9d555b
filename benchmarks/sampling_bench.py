"""Sampler throughput: the reference's loop vs `sampling.generate` (one jitted program).

(a) baseline, written the way upstream generate.py works: a Python loop over blocks and steps
    that calls a jitted FULL forward (whole canvas, full-vocabulary head) every step, then a
    jitted selection step with the same semantics as `generate` (argmax, softmax confidence,
    per-row top-k); the schedule is computed on the host at each block start.
(b) `sampling.generate`: the whole run is one `lax.scan`; the last layer and the LM head only
    run on the current block when nothing to its left is still masked.
(c) the same process's jitted float32 matmul peak, to express (b) as a fraction of the machine.

Usage: .venv/bin/python benchmarks/sampling_bench.py [--batches 1 4] [--repeats 2]
Prints a markdown table; checks that (a) and (b) return identical tokens.
"""

from __future__ import annotations

import harness
import jax
import jax.numpy as jnp
import numpy as np

from lladax import config
from lladax.diffusion import denoise, sampling
from lladax.model import transformer

PROMPT, GEN, STEPS, BLOCK = 64, 128, 128, 32
COLUMNS = [
    "batch",
    "(a) loop+full fwd s",
    "(a) tok/s",
    "(b) generate s",
    "(b) tok/s",
    "(b)/(a)",
    "(a) GFLOP/s (% peak)",
    "(b) useful GFLOP/s (% peak)",
    "tokens identical",
]


def bench_cfg() -> config.ModelConfig:
    # preset "small": 4 layers, d_model 256, 4 heads, mlp 768, vocab 2048. A larger init std
    # than 0.02 gives peaked logits (as a trained model has), so confidences are well separated
    # and (a) vs (b) token identity is a meaningful check rather than a coin flip on 1e-7 ties.
    return config.preset("small", init_std=0.15)


def baseline(params, cfg, prompt: np.ndarray) -> np.ndarray:
    """(a): Python loop, full forward per step (reference structure), same selection rule."""
    fwd = jax.jit(lambda p, x: transformer.apply(p, cfg, x))

    @jax.jit
    def select(x, logits, k, block_end):
        masked = x == cfg.mask_token_id
        x0 = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        p = jax.nn.softmax(logits, axis=-1)
        conf = jnp.take_along_axis(p, x0[..., None], axis=-1)[..., 0]
        pos = jnp.arange(x.shape[1])
        eligible = masked & (pos[None, :] < block_end)
        conf = jnp.where(eligible, conf, -jnp.inf)
        x0 = jnp.where(masked, x0, x)
        rank = jnp.argsort(jnp.argsort(-conf, axis=1, stable=True), axis=1)
        return jnp.where((rank < k[:, None]) & eligible, x0, x)

    B, P = prompt.shape
    x = jnp.concatenate(
        [jnp.asarray(prompt, jnp.int32), jnp.full((B, GEN), cfg.mask_token_id, jnp.int32)], axis=1
    )
    s = STEPS // (GEN // BLOCK)
    for b in range(GEN // BLOCK):
        start, end = P + b * BLOCK, P + (b + 1) * BLOCK
        m = np.asarray((x[:, start:end] == cfg.mask_token_id).sum(axis=1))
        sched = np.asarray(denoise.transfer_schedule(jnp.asarray(m), s))
        for i in range(s):
            x = select(x, fwd(params, x), jnp.asarray(sched[:, i], jnp.int32), end)
    return np.asarray(x)


def fused(params, cfg, prompt: np.ndarray) -> np.ndarray:
    """(b)."""
    return np.asarray(
        sampling.generate(params, cfg, prompt, steps=STEPS, gen_length=GEN, block_length=BLOCK)
    )


def main() -> None:
    ap = harness.parser(__doc__)
    harness.add_options(ap, batches=[1, 4], repeats=2)
    args = ap.parse_args()

    cfg = bench_cfg()
    params = transformer.init_params(cfg, jax.random.key(0))
    peak = harness.same_run_peak(2048) / 1e9  # (c), GFLOP/s
    n = PROMPT + GEN

    def f_full(batch: int, q: int | None = None) -> float:
        return batch * cfg.forward_flops(n, q)

    print(f"devices: {jax.devices()}; f32 matmul peak {peak:.1f} GFLOP/s")
    print(
        f"model: preset small (L={cfg.n_layers}, d={cfg.d_model}, H={cfg.n_heads}, "
        f"mlp={cfg.mlp_hidden_size}, V={cfg.vocab_size}); prompt {PROMPT}, gen {GEN}, "
        f"steps {STEPS}, block {BLOCK}; best of {args.repeats} after a warm-up run\n"
    )
    print(harness.table_header(COLUMNS))
    for batch in args.batches:
        rng = np.random.default_rng(batch)
        prompt = rng.integers(5, cfg.vocab_size, size=(batch, PROMPT)).astype(np.int32)
        ta, out_a = harness.best_time(lambda p=prompt: baseline(params, cfg, p), args.repeats)
        tb, out_b = harness.best_time(lambda p=prompt: fused(params, cfg, p), args.repeats)
        fa = STEPS * f_full(batch)
        fb = STEPS * f_full(batch, q=BLOCK)  # every step takes the window path here
        toks = batch * GEN
        same = bool((out_a == out_b).all())
        cells = [batch, f"{ta:.2f}", f"{toks / ta:.1f}", f"{tb:.2f}", f"{toks / tb:.1f}"]
        cells += [f"{ta / tb:.2f}x", f"{fa / ta / 1e9:.1f} ({100 * fa / ta / 1e9 / peak:.0f}%)"]
        cells += [f"{fb / tb / 1e9:.1f} ({100 * fb / tb / 1e9 / peak:.0f}%)", same]
        print(harness.table_row(cells))
    print(
        f"\nmatmul FLOPs per step, full forward / block window: "
        f"{f_full(1) / f_full(1, q=BLOCK):.2f}x (the compute-bound limit of (b)/(a) here)"
    )


if __name__ == "__main__":
    main()
